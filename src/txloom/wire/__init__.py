"""Sans-I/O codecs, one module per wire format.

Nothing here imports Twisted or touches a socket, a clock or a file: a decoder takes
bytes in and hands back values (or raises one of the errors in ``txloom.wire.errors``), an
encoder takes values and returns bytes. The Twisted protocols elsewhere in txloom are thin
glue around these objects, which keeps every parser testable on its own with arbitrary
splits and arbitrary garbage.
"""
