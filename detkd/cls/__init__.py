"""Image-classification distillation: CIFAR-style ResNets and torchvision classifiers,
Fashion-MNIST (embedded) and CIFAR-10/100 data, the typed config and the training loop
behind ``tools/train_cls.py`` (see docs/classification.md).

Submodules are imported on demand (``detkd.cls.train`` pulls in torchvision)."""
