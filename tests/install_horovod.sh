#!/usr/bin/env bash
# Builds Horovod 0.28.1 (Gloo, no MPI) against the TensorFlow of the running
# Python; the published 0.28.1 does not build against TF 2.21 unchanged:
#   - TF moved xla_builder.h; a one-line shim header points the old path at it;
#   - two third-party headers TF ships are not on Horovod's include path.
# 2 to 11 minutes on 2 cores (107 s here). Does nothing when Horovod imports.
set -euo pipefail
python=${PYTHON:-python}
if "$python" -c "import horovod.tensorflow" 2>/dev/null; then
    echo "horovod.tensorflow imports; not rebuilding"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tf_include=$("$python" -c "import tensorflow as tf; print(tf.sysconfig.get_include())")
mkdir -p "$work/shim/tensorflow/compiler/xla/client"
echo '#include "xla/hlo/builder/xla_builder.h"' \
    > "$work/shim/tensorflow/compiler/xla/client/xla_builder.h"
# Horovod's setup.py imports TensorFlow to find its flags: build in this
# environment, not an isolated one.
"$python" -m pip install setuptools wheel
CXXFLAGS="-I$work/shim -I$tf_include/external/highwayhash -I$tf_include/external/farmhash_archive/src" \
MAKEFLAGS=-j2 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    "$python" -m pip install --no-cache-dir --no-build-isolation horovod==0.28.1
"$python" -c "import horovod, horovod.tensorflow; print('horovod', horovod.__version__)"
