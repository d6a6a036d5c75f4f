"""After install: FFCV's JPEG decode must give PIL's colours (stock 1.0.2 is ~1.2/1.4 levels
darker in R/B). Exit 1 when any channel's mean differs by more than 0.25 level."""
import io
import sys

import numpy as np
from ffcv.libffcv import imdecode
from PIL import Image

y, x = np.mgrid[0:240, 0:320]
rng = np.random.default_rng(0)
image = np.stack([(x * 0.8 + 40 * np.sin(y / 7)) % 256, (y + 30 * np.cos(x / 5)) % 256,
                  (x + y) % 256], -1)
image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
buffer = io.BytesIO()
Image.fromarray(image).save(buffer, "JPEG", quality=90)
jpeg = buffer.getvalue()
reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.float64)
out = np.empty((240, 320, 3), np.uint8)
assert imdecode(np.frombuffer(jpeg, np.uint8), out, 240, 320, 240, 320, 0, 0, 1, 1, False,
                False) == 0
bias = (out - reference).reshape(-1, 3).mean(0)
print(f"ffcv decode - PIL, mean R G B: {bias.round(3).tolist()}")
if np.abs(bias).max() >= 0.25:
    sys.exit("ffcv decodes JPEGs with a colour bias: rebuild it with .ci/ffcv-install.sh")
