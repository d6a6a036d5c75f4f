#!/usr/bin/env bash
# Build FFCV 1.0.2 from its sdist with the accurate inverse DCT, then install it.
# Stock 1.0.2 decodes with TJFLAG_FASTDCT, whose integer IDCT lowers Y, Cb and Cr by ~0.5 level:
# R comes out ~1.2 and B ~1.4 levels darker than the JPEG says (PIL, torchvision, OpenCV and
# libjpeg-turbo's own default all agree with each other). The accurate DCT costs ~5% decode CPU.
# usage: ffcv-install.sh PIP WORKDIR
set -euo pipefail
PIP=$1; W=$2
rm -rf "$W" && mkdir -p "$W"
"$PIP" download -q --no-deps --no-binary :all: ffcv==1.0.2 -d "$W"
echo "42766a487c8a659b543d070f24732c4b65aab8d96980f5792c63e91e55511f00  $W/ffcv-1.0.2.tar.gz" \
  | sha256sum -c --quiet -
tar -xzf "$W/ffcv-1.0.2.tar.gz" -C "$W"
F=$W/ffcv-1.0.2/libffcv/libffcv.cpp
OLD='TJPF_RGB, TJFLAG_FASTDCT | TJFLAG_NOREALLOC);'
NEW='TJPF_RGB, TJFLAG_ACCURATEDCT | TJFLAG_NOREALLOC);'
[ "$(grep -cF "$OLD" "$F")" = 1 ] || { echo "ffcv-install: '$OLD' is not in $F exactly once" >&2; exit 1; }
sed -i "s/$OLD/$NEW/" "$F"
[ "$(grep -cF "$NEW" "$F")" = 1 ] || { echo "ffcv-install: the patch did not apply to $F" >&2; exit 1; }
# A local folder is always built and replaces an installed stock ffcv 1.0.2.
"$PIP" install -q --no-build-isolation "$W/ffcv-1.0.2"
