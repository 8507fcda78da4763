"""Video only: following each hand from frame to frame (`tracker`, with the image's own motion
from `motion`), and the end of a clip's work per track (`finalize`: one shape, the fit to the
landmarks, `smoothing`). Imports numpy, torch, OpenCV and the stages below it; never a
pipeline."""
