"""The recording formats spikesort reads: one list, imported by the reader, the CLI and the batch
manifest. Nothing heavy here, so ``spikesort --help`` and the batch driver can import it."""

FORMATS = ("binary", "spikeglx", "openephys", "nwb", "intan", "hdf5", "spikeinterface")
