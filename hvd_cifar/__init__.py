"""The TensorFlow CIFAR-10 tutorial CNN, trained data-parallel with Horovod."""
