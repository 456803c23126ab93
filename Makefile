# Two commands a newcomer needs: `make demo` (the main job on the embedded
# synthetic data) and `make test`. Both install first.
PYTHON ?= python3
# The CPU wheel by default; on a GPU host set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test protos bench clean

install:
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[host,dev]"

demo: install
	autonad-edge search

test: install
	$(PYTHON) -m pytest -q

# Regenerate the gRPC stubs from protos/ (a test checks they are in sync).
protos:
	$(PYTHON) -m autonad_agent.protogen

clean:
	rm -rf build dist *.egg-info .pytest_cache runs
