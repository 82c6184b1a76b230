"""Kernels behind roicli's operators: one module per technology, chosen by `select.py`.

    from roicli.ops import kernels
    with kernels.use("torch"):          # or ROICLI_KERNEL=torch
        out = roi_align(x, boxes, 7)
    kernels.available()                 # {"torch": (True, "devices: any"), "cpp": (False, "..."), ...}

The contract every kernel module implements. Inputs are validated and normalised by the front door
(`input` Tensor[N, C, H, W] in any layout, `rois` Tensor[K, 5] (batch, x1, y1, x2, y2) in the
dtype `_validate.as_rois` gives, same device); kernels never validate. Geometry follows the torch
reference bit for bit; float16/bfloat16 accumulate in float32. Outputs are contiguous.

    roi_align_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                      aligned, mode) -> (output Tensor[K, C, PH, PW], argmax)
        argmax: mode "max": Tensor[K, C, PH, PW] int32, the winning sample of the bin as
        iy * IX + ix (IX the RoI's own samples per bin along x; the first max wins; -1 when the
        bin has no sample); mode "avg": an empty int32 Tensor[0].
    roi_align_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                       sampling_ratio, aligned, mode, batch_size, channels, height, width)
        -> grad_input Tensor[N, C, H, W]
    roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width) -> (output, argmax)
        argmax: Tensor[K, C, PH, PW] int32 (torchvision's dtype; H * W < 2^31 is checked by the
        front door), h * W + w inside the channel plane (torchvision's), -1
        for an empty bin (output 0 there); the first maximum in row-major order; NaN never wins
        and a bin of NaN/-inf only gives -FLT_MAX.
    roi_pool_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                      batch_size, channels, height, width) -> grad_input
    precise_roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width, aligned)
        -> output
    precise_roi_pool_backward(grad, rois, spatial_scale, pooled_height, pooled_width, aligned,
                              batch_size, channels, height, width) -> grad_input

Backward outputs are in grad's dtype and deterministic on CPU. See `select.py` for how a module
plugs in (`DEVICES`, `check()`).
"""

from roicli.ops.kernels.select import IMPLEMENTATIONS, KernelFallbackWarning, available, forced, kernel_for, use

__all__ = ["IMPLEMENTATIONS", "KernelFallbackWarning", "available", "forced", "kernel_for", "use"]
