"""Putting a trained model to work.

predictors     Keras, SavedModel, TFLite and ONNX models behind one interface
predict        files and folders -> top-k, streamed through tf.data
export         SavedModel, TFLite (float32/float16/int8) and ONNX files of a run
export_checks  each exported file checked against the .keras model on held-out images
model_card     the README written beside the exported files
serve, tf_serving, serve_page.html   the HTTP server: TF Serving's REST API, uploads, a page
"""
