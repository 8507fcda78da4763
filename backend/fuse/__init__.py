"""Fusion of every signal into the MANO hand: the network's prediction, MediaPipe's landmarks,
the hand model's anatomy. `landmark_fit` fits a photo's hand or a video track to 2D landmarks
with the network's pose as the prior. Imports torch and the backend's hand model and camera
only; never a pipeline, the HTTP service or the CLI."""
