"""The pipelines that run the stages in order: `photo` (a photo -> `hamr.prediction/1`) and
`video` (a clip -> `hamr.video/1`). The entry points (CLI, HTTP service) call these; nothing
below them (detect, network, fuse, track) imports a pipeline."""
