"""airbench's full scale: CIFAR-10 (3x32x32) on a GPU, three conv groups, 33 epochs (the airbench96 recipe).

The declared scale of the shared recipe (train.py binds it with use_scale): what the image shape, the hardware
and the data size decide. The knobs among them sit in the same regions as in train.py, so each specialist owns
its knobs here and its code there.
"""
IMAGE_SHAPE = (3, 32, 32)
EVAL_BATCH = 2000

# autoresearch: begin arch
WIDTH1 = 128  # range: 32..256
WIDTH2 = 512  # range: 64..768
WIDTH3 = 512  # range: 64..768
WHITEN_IMAGES = 5000  # range: 500..50000
AMP_DTYPE = "bfloat16"  # options: bfloat16|float16|float32
CHANNELS_LAST = True
COMPILE = False
COMPILE_MODE = "default"  # options: default|max-autotune-no-cudagraphs
WIDTHS = (WIDTH1, WIDTH2, WIDTH3)  # one conv group each: 32 -> 16 -> 8 -> 4 pixels
# autoresearch: end arch

# autoresearch: begin opt
EPOCHS = 33.0  # range: 5..60
BATCH_SIZE = 1024  # range: 128..2048
LR = 9.0  # range: 1..30
# autoresearch: end opt

# autoresearch: begin aug
FLIP = True
TRANSLATE = 4  # range: 0..6
CUTOUT = 12  # range: 0..20
TTA_MIRROR = True
# autoresearch: end aug
