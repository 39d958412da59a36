"""Token-level constants shared with the original MobileVLM / LLaVA code."""

IMAGE_TOKEN_INDEX = -200  # placeholder id in input_ids where the image's vision tokens go
IGNORE_INDEX = -100  # label of positions that are not supervised
IMAGE_PLACEHOLDER = "<image>"  # the marker in LLaVA-format conversation text
