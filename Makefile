# One command sets up and runs the main job (`make demo`), one sets up and runs the tests (`make test`).
# The virtual environment lives in .venv; nothing is installed outside the clone.
#
# torch: TORCH_SPEC defaults to the CPU wheel torch==2.13.0. With a GPU, override it, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3.11
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench results model package clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,train,detect,heif,fast]'
	# MediaPipe Hands, the hand detector: 0.10.21 is the last release that bundles its hand
	# models; --no-deps skips jax and opencv-contrib (pyproject's `detect` extra has what it needs)
	$(PY) -m pip install -q --no-deps mediapipe==0.10.21
	touch $(STAMP)

# The main job: import a hand from a real photo into a Blender scene (headless), on the embedded
# defaults (open hand model, shipped checkpoint): the backend finds the hand itself. The photo is
# a webcam photo (Apache-2.0, backend/assets/samples/webcam_hand.txt). IMAGE=your.jpg
# [BOX=x0,y0,x1,y1] for your own.
IMAGE ?= backend/assets/samples/webcam_hand.jpg
demo: $(STAMP)
	mkdir -p out/demo
	$(PY) -m backend.cli blend $(IMAGE) --out out/demo/scene.blend --render out/demo/render.png $(if $(BOX),--box $(BOX))
	$(PY) -m backend.demo --out docs/images
	@echo "scene: out/demo/scene.blend  render: out/demo/render.png  hand model: docs/images/open_hand.png"

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The README's results table: re-run the three commands under it (docs/results/*.json), then
# rewrite the table from them (one thread each, as the table says).
results: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m tools.results_table --run --write README.md

bench: $(STAMP)
	$(PY) -m benchmarks.hand_model
	$(PY) -m benchmarks.render
	$(PY) -m benchmarks.synth
	$(PY) -m benchmarks.inference
	$(PY) -m benchmarks.refine
	$(PY) -m benchmarks.accuracy
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.serve
	$(PY) -m benchmarks.blender

# Regenerate the embedded open hand model (deterministic; the test suite checks the committed copy).
model: $(STAMP)
	$(PY) -m backend.hand_model.generate --out backend/assets/open_hand

# The Blender extension zip (validated with Blender's own validator) in dist/.
package: $(STAMP)
	$(PY) -m tools.package_extension --out dist/

clean:
	rm -rf $(VENV) build dist *.egg-info
