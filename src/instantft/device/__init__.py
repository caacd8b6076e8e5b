"""Fine-tuning on the device: ``instantft export`` writes a bundle (the frozen chain backbone,
the initial adapters, the batch schedule, the images as uint8; :mod:`instantft.device.bundle`),
``instantft-device`` (csrc/device, libc only) fine-tunes from it on the board and writes an
adapter that ``instantft evaluate --adapter`` reads.

Only the file names and the format tag live here, so that registering the ``export``
subcommand imports nothing heavy."""

FORMAT = "instantft-device-bundle/1"
BUNDLE_FILE = "bundle.safetensors"
MANIFEST_FILE = "manifest.json"
ADAPTER_FILE = "adapter.safetensors"
#: the cached methods the device runs, and their Forward Cache storage
METHODS = {"skip2-lora": "fp32", "instantft": "nf4"}

__all__ = ["ADAPTER_FILE", "BUNDLE_FILE", "FORMAT", "MANIFEST_FILE", "METHODS"]
