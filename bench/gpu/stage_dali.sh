# Here (not on the device): DALI's wheels for the device's Python 3.12, in pieces that each fit
# one device call: .stage-dali/01..NN (add `/.stage-dali/` to .git/info/exclude first). The
# device has numpy, pyyaml and packaging already: those are left out, so /tmp/site never
# shadows them there.
set -euo pipefail
rm -rf build/dali-wheels
.venv/bin/pip download -q nvidia-dali-cuda130==2.4.0 --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d build/dali-wheels 2>&1 | grep -v "^WARNING: Location" || true
rm -f build/dali-wheels/{numpy,pyyaml,packaging,six,typing_extensions,wheel}-*.whl
ls build/dali-wheels; du -sh build/dali-wheels
python3 ../shared/device/stage build/dali-wheels --out .stage-dali
