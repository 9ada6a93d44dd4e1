"""`gangsched device-plugin`: the kubelet device plugin that hands containers the GPUs gangsched picked."""
