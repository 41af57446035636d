"""airbench's mini scale: scikit-learn's 8x8 digits on one CPU thread, two conv groups, 8 epochs.

The declared scale of the shared recipe (train.py binds it with use_scale): what the image shape, the hardware
and the data size decide. The knobs among them sit in the same regions as in train.py, so each specialist owns
its knobs here and its code there.
"""
IMAGE_SHAPE = (1, 8, 8)
EVAL_BATCH = 500
# CUDA-only settings, fixed at this scale: on a CPU thread they do nothing (or, for compile, cost more than the
# whole training run).
AMP_DTYPE = "float32"
CHANNELS_LAST = False
COMPILE = False
COMPILE_MODE = "default"

# autoresearch: begin arch
WIDTH1 = 32  # range: 4..256
WIDTH2 = 64  # range: 4..512
WHITEN_IMAGES = 1300  # range: 100..1300
WIDTHS = (WIDTH1, WIDTH2)  # one conv group each: 8 -> 4 -> 2 pixels
# autoresearch: end arch

# autoresearch: begin opt
EPOCHS = 8.0  # range: 2..40
BATCH_SIZE = 128  # range: 16..1024
LR = 30.0  # range: 1..60
# autoresearch: end opt

# autoresearch: begin aug
FLIP = False
TRANSLATE = 1  # range: 0..3
CUTOUT = 3  # range: 0..6
TTA_MIRROR = False
# autoresearch: end aug
