"""mptc: the meta-parameterized pre-training compiler.

    >>> import mptc
    >>> mptc.__version__
    '0.1.0'
"""
__version__ = "0.1.0"
