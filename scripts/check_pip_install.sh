#!/usr/bin/env bash
# Checks the pip packaging of mhsa end to end: builds the wheel (pip wheel --no-build-isolation,
# against the torch of .venv), creates a fresh virtual environment in a temporary directory
# (no system site-packages, no .pth pointing at this checkout), installs the same torch version
# and the wheel into it, and from outside the source tree imports mhsa and runs a forward and
# backward pass against nn.MultiheadAttention. Called by scripts/test; takes a few minutes
# (most of it the CMake build inside pip, and installing torch).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mhsa-pip.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log() { printf '\033[1m[check_pip_install]\033[0m %s\n' "$*" >&2; }

log "building the wheel (torch $TORCH_VERSION)"
if ! "$PY" -m pip wheel --no-build-isolation --no-deps -q -w "$WORK/dist" "$REPO" >"$WORK/wheel.log" 2>&1; then
  tail -40 "$WORK/wheel.log" >&2
  exit 1
fi
WHEEL="$(ls "$WORK"/dist/mhsa-*.whl)"
log "built $(basename "$WHEEL")"

# Tagged py3-none-<platform> (no CPython extension inside), requiring exactly this torch, and
# carrying the whole package (the demo subpackage and its report template, and the integrations,
# too).
"$PY" - "$WHEEL" "$TORCH_VERSION" <<'PYEOF'
import sys
import zipfile
from pathlib import Path

wheel, torch_version = Path(sys.argv[1]), sys.argv[2]
name, version, python_tag, abi_tag, platform_tag = wheel.stem.split("-")
assert (python_tag, abi_tag) == ("py3", "none"), f"{wheel.name}: expected a py3-none-<platform> wheel"
assert platform_tag.startswith(("linux_", "manylinux")), wheel.name
with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    metadata = archive.read(f"{name}-{version}.dist-info/METADATA").decode()
for required in ("mhsa/libmhsa.so", "mhsa/libmhsa.torch_version", "mhsa/demo/__main__.py",
                 "mhsa/demo/report_template.html", "mhsa/integrations/transformers.py"):
    assert required in names, f"{wheel.name} lacks {required}"
requirement = f"Requires-Dist: torch=={torch_version}"
assert requirement in metadata.splitlines(), f"{wheel.name} does not require {requirement}"
print(f"{wheel.name}: tags py3-none-{platform_tag}, {requirement}")
PYEOF

log "fresh venv: torch==$TORCH_VERSION, then the wheel"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
if ! { "$VPY" -m pip install -q "torch==$TORCH_VERSION" && "$VPY" -m pip install -q "$WHEEL"; } >"$WORK/install.log" 2>&1; then
  tail -40 "$WORK/install.log" >&2
  exit 1
fi

log "import mhsa and run forward + backward in the fresh venv"
cd "$WORK"
# (numpy is not needed: silence torch's note that it is missing.)
env -u MHSA_LIBRARY -u PYTHONPATH "$VPY" -W "ignore:Failed to initialize NumPy" - "$WORK/venv" <<'PYEOF'
import sys
from pathlib import Path

import torch
import mhsa

venv = Path(sys.argv[1]).resolve()
package = Path(mhsa.__file__).resolve().parent
assert venv in package.parents, f"mhsa imported from {package}, not from the fresh venv"
assert Path(mhsa.LIBRARY_PATH).resolve() == package / "libmhsa.so", mhsa.LIBRARY_PATH
stamp = (package / "libmhsa.torch_version").read_text().strip()
assert stamp == torch.__version__.split("+")[0], (stamp, torch.__version__)

torch.manual_seed(0)
ref = torch.nn.MultiheadAttention(32, 4, batch_first=True, dtype=torch.float64)
attn = mhsa.MultiheadSelfAttention.from_torch(ref)
x = torch.randn(2, 7, 32, dtype=torch.float64, requires_grad=True)
out, weights = attn(x, is_causal=True)
(out.sum() + weights.sum()).backward()
grad = x.grad.clone()
x.grad = None
mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
out_ref, weights_ref = ref(x, x, x, attn_mask=mask)
(out_ref.sum() + weights_ref.sum()).backward()
torch.testing.assert_close(out, out_ref)
torch.testing.assert_close(grad, x.grad)
print(f"mhsa {mhsa.__version__} from {package} (torch {torch.__version__}): forward and backward match")
PYEOF
log "ok"
