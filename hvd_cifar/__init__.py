"""The TensorFlow CIFAR-10 tutorial CNN, trained data-parallel with Horovod."""
import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) would bury our one-line errors and
# log lines; users can still set TF_CPP_MIN_LOG_LEVEL=0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
