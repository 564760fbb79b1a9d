"""rlff-esc: the logic behind the notebooks (one module per stage)."""

import warnings

# Notebooks here run headless (papermill) and are shared as HTML, where tqdm's text bars are the
# right rendering; its hint to install ipywidgets for graphical bars is noise in every report.
warnings.filterwarnings("ignore", message="IProgress not found")
