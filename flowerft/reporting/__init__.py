"""What a run did and why its model decides as it does.

evaluate            a checkpoint on a held-out split: loss, accuracy, per class, confusion matrix
report, page_data   the facts of one run gathered for its page
html_page           report.html, self-contained
curves              the training curves (PNG helpers: flowerft/figures.py)
gradcam, explain    Grad-CAM heatmaps and `flowerft explain`'s PNGs
"""
