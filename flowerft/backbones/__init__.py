"""The networks a head is put on.

registry       every built-in backbone as data: constructor, scaling, sizes, blocks, ImageNet top-1
resnet34       the book's ResNet-34, in built-in layers
own_model      a `.keras` model a user brings, cut below its top
hub_presets    KerasHub presets (hf://, kaggle://, a folder)
weights_files  Keras 3 and legacy Keras 2 weights files, checked layer by layer
"""
