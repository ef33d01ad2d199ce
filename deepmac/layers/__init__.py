"""Building blocks shared by the backbones and the mask heads (no model logic): the
Keras-faithful BatchNorm and initialisers, and the hourglass blocks."""
