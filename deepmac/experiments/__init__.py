"""From a config to a trained run: training data, model, optimiser, criterion, the engine's
loop and periodic evaluation (``training``)."""
