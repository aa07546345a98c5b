"""torch on one thread: the same float reduction order in every run a test compares, however
loaded the machine is (shared by the model and train test helpers)."""

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
