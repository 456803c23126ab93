/*
 * Spatial shift (S2-MLPv2 / AutoNAD Eq. 18-19) for NCHW tensors: the plain C launcher.
 *
 * Semantics (identical to autonad_edge.models.spatial_shift.spatial_shift_reference):
 * the C channels form four groups g = 0..3 covering [floor(g*C/4), floor((g+1)*C/4));
 * each group is shifted by one pixel along H or W, and the row/column the shift vacates
 * keeps its ORIGINAL value (no zero fill):
 *
 *     group   pattern 1   pattern 2        "down":  y[h] = x[max(h-1, 0)]
 *       0     down        right            "up":    y[h] = x[min(h+1, H-1)]
 *       1     up          left             "right": y[w] = x[max(w-1, 0)]
 *       2     right       down             "left":  y[w] = x[min(w+1, W-1)]
 *       3     left        up
 *
 * The operator is a pure permutation-with-duplication of the input, so the result is
 * bit-exact for every dtype (NaN payloads and signed zeros included).
 */
#ifndef AUTONAD_SPATIAL_SHIFT_H
#define AUTONAD_SPATIAL_SHIFT_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define AUTONAD_SHIFT_API __declspec(dllexport)
#else
#define AUTONAD_SHIFT_API __attribute__((visibility("default")))
#endif

/* Element type codes for the `dtype` argument. */
#define AUTONAD_SHIFT_FP32 0
#define AUTONAD_SHIFT_FP16 1

/*
 * Enqueue y = spatial_shift(x, pattern) on `stream` (0 = legacy default stream).
 *
 * x, y      device pointers to contiguous NCHW tensors of n*c*h*w elements; they must
 *           not overlap (the operator cannot run in place).
 * n,c,h,w   dimensions, each >= 0; a tensor with a zero dimension is a no-op.
 * pattern   1 (Eq. 18) or 2 (Eq. 19).
 * dtype     AUTONAD_SHIFT_FP32 or AUTONAD_SHIFT_FP16.
 *
 * Returns a cudaError_t value: cudaSuccess, cudaErrorInvalidValue for bad arguments
 * (nothing is enqueued then), or the error of the launch itself. Like any kernel launch,
 * errors that happen while the kernel runs surface on a later synchronising call.
 * Thread-safe; allocates nothing.
 */
AUTONAD_SHIFT_API int autonad_spatial_shift(const void* x, void* y, int n, int c, int h, int w, int pattern,
                                            int dtype, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* AUTONAD_SPATIAL_SHIFT_H */
