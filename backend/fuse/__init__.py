"""Fusion of every signal into the MANO hand: the network's prediction, MediaPipe's image and
world landmarks, the hand model's shape prior. `fusion` runs it for a batch of hands: a start in
closed form from 3D keypoints (`closed_form`), then a few Levenberg-Marquardt steps on every
signal (`gauss_newton`). Imports torch, numpy and the backend's hand model, camera and
rotations; never a pipeline, the HTTP service or the CLI."""
