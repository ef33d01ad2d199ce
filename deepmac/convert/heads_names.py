"""Name tables of the Deep-MAC mask heads (``MaskHeadNetwork`` in ``deepmac_meta_arch.py``) and of
the hourglass network they share with the backbone and with Deep-MARC.

Paths here are relative to a ``MaskHeadNetwork`` (its attributes ``_net`` and ``project_out``);
``deepmac_names`` nests them under ``_mask_net/`` of the whole model. Targets are relative to the
PyTorch head built by ``deepmac.mask_heads.build_mask_head``.

TF side, per head kind (attribute names of the official classes):

* hourglass (``hourglass_network.HourglassNetwork``): ``conv_input`` or ``downsample_input``
  (``conv_block``, ``residual_block``), ``hourglass_network/<stack>`` (``EncoderDecoderBlock``:
  ``encoder_block1/<i>``, ``encoder_block2/<i>``, ``inner_block/0`` = the next stage, or
  ``inner_block/<i>`` residual blocks at the deepest stage, ``decoder_block/<i>``),
  ``output_conv/<stack>``, and between stacks ``intermediate_conv1/2`` and
  ``intermediate_residual``. Blocks hold ``conv_block`` (conv + ``norm``), ``conv``, ``norm``
  and ``skip``, named like ours.
* resnet (``ResNetMaskNetwork``): ``input_layer`` and a Keras *functional* ``model`` whose
  layers are addressed by ordinal, ``layer_with_weights-N``, in Keras' depth order. That order
  is ``RESNET_BLOCK_LAYERS`` per block, so the ordinal rules are generated from it.
* fully_connected (``FullyConnectedMaskHead``): ``input_layer``, ``fc1``, ``fc2``; TF never
  builds its ``project_out`` (the output already has one channel), and neither do we.
"""

from __future__ import annotations

from deepmac.convert.names import Rule, Scope
from deepmac.mask_heads.hourglass import HOURGLASS_HEADS
from deepmac.mask_heads.resnet import RESNET_HEAD_STAGES

__all__ = [
    "HEAD_INPUT_KERNELS",
    "HOURGLASS_RULES",
    "HOURGLASS_SINGLE_RULES",
    "HOURGLASS_STACKED_RULES",
    "RESNET_BLOCK_LAYERS",
    "TF_DEEPMAC_HEADS",
    "FC_OUTPUT_KERNEL",
    "head_kind",
    "mask_head_scopes",
]

#: Rules shared by every hourglass network, relative to it.
HOURGLASS_RULES: tuple[Rule, ...] = (
    # InputConvBlock (mask heads) / InputDownsampleBlock (backbone) -> our two modules.
    (r"^(?:conv_input|downsample_input)/conv_block/", "input_conv/"),
    (r"^(?:conv_input|downsample_input)/residual_block/", "input_residual/"),
    # TF wraps the next stage in a one-element list; ours is the module itself. (A deepest-stage
    # ``inner_block/<i>/`` is a residual block list, as ours, and is left alone.)
    (
        r"inner_block/0/(?=(?:encoder_block1|encoder_block2|inner_block|decoder_block)/)",
        "inner_block/",
    ),
)
#: Stacked hourglass (the HG104 backbone): per-stack lists keep their index.
HOURGLASS_STACKED_RULES: tuple[Rule, ...] = (
    (r"^hourglass_network/(\d+)/", r"hourglasses/\1/"),
    (r"^output_conv/(\d+)/", r"output_convs/\1/"),
    (r"^intermediate_conv1/(\d+)/", r"inter_input_convs/\1/"),
    (r"^intermediate_conv2/(\d+)/", r"inter_output_convs/\1/"),
    (r"^intermediate_residual/(\d+)/", r"inter_residuals/\1/"),
)
#: Single-stack hourglass (mask heads): stack 0 is the only one.
HOURGLASS_SINGLE_RULES: tuple[Rule, ...] = (
    (r"^hourglass_network/0/", "encoder_decoder/"),
    (r"^output_conv/0/", "output_conv/"),
)

#: Weighted layers of one ``resnet_v1.block_basic`` in Keras' functional order, keyed by
#: ``conv_shortcut``: the 1x1 shortcut conv comes *last* (Keras orders functional layers by graph
#: depth, and the shortcut sits just before the Add), named like ``KerasBasicBlock``'s modules.
RESNET_BLOCK_LAYERS: dict[bool, tuple[str, ...]] = {
    True: ("preact_bn", "conv1", "bn1", "conv2", "bn2", "shortcut"),
    False: ("preact_bn", "conv1", "bn1", "conv2", "bn2"),
}

#: Deep-MAC heads of the official code that have weights (the ``network_type`` strings).
TF_DEEPMAC_HEADS: tuple[str, ...] = (*HOURGLASS_HEADS, *RESNET_HEAD_STAGES, "fully_connected")

#: Kernels whose shape ``(1, 1, C_in, nc)`` gives a head's input channels and width ``nc``,
#: relative to a ``MaskHeadNetwork``; the first present one is used.
HEAD_INPUT_KERNELS: tuple[str, ...] = (
    "_net/conv_input/conv_block/conv/kernel",  # hourglass: 3x3, (3, 3, C_in, nc)
    "_net/input_layer/kernel",  # resnet, fully_connected: 1x1
)
#: ``fully_connected``: ``(1024, S * S)`` gives the mask size ``S``.
FC_OUTPUT_KERNEL = "_net/fc2/kernel"


def head_kind(name: str) -> str:
    """``"hourglass"``, ``"resnet"`` or ``"fully_connected"`` for a ``TF_DEEPMAC_HEADS`` name."""
    kinds = {
        **{n: "hourglass" for n in HOURGLASS_HEADS},
        **{n: "resnet" for n in RESNET_HEAD_STAGES},
        "fully_connected": "fully_connected",
    }
    if name not in kinds:
        raise ValueError(
            f"{name!r} is not a Deep-MAC mask head of the official code; convertible heads: "
            f"{', '.join(TF_DEEPMAC_HEADS)}"
        )
    return kinds[name]


def _resnet_ordinal_rules(name: str) -> tuple[Rule, ...]:
    """``layer_with_weights-N/`` -> ``blocks/<i>/<module>/`` for a ``RESNET_HEAD_STAGES`` head
    (block 0 of every stack has the conv shortcut, as ``stack_basic`` builds it)."""
    _, stage_blocks = RESNET_HEAD_STAGES[name]
    rules: list[Rule] = []
    ordinal = block = 0
    for num_blocks in stage_blocks:
        for i in range(num_blocks):
            for part in RESNET_BLOCK_LAYERS[i == 0]:
                rules.append((rf"^layer_with_weights-{ordinal}/", f"{block}/{part}/"))
                ordinal += 1
            block += 1
    return tuple(rules)


def mask_head_scopes(name: str) -> tuple[Scope, ...]:
    """Scopes of a ``MaskHeadNetwork(network_type=name)`` -> our ``build_mask_head(name)``."""
    kind = head_kind(name)
    project_out = (Scope("project_out/", "project_out/"),)
    scopes = {
        "hourglass": lambda: (
            Scope("_net/", "hourglass/", HOURGLASS_RULES + HOURGLASS_SINGLE_RULES),
            *project_out,
        ),
        "resnet": lambda: (
            Scope("_net/input_layer/", "input_layer/"),
            Scope("_net/model/", "blocks/", _resnet_ordinal_rules(name)),
            *project_out,
        ),
        "fully_connected": lambda: (
            Scope("_net/input_layer/", "input_layer/"),
            Scope("_net/fc1/", "fc1/"),
            Scope("_net/fc2/", "fc2/"),
        ),
    }
    return scopes[kind]()
