/* Separable resampling of one uint8 HWC image to normalized float32 CHW.
 *
 * Plain C, no Python C API: export/preprocess.py loads it with ctypes. The maps are the
 * composed per-axis maps of export/preprocess.py (resize -> crop -> align-corners resize,
 * one linear map per axis), each output reading `taps` consecutive inputs from its start
 * (zero weights pad the shorter ones). Accumulation is in float32, as in the reference.
 */
#include <stdint.h>

/* One output row of pass 1 from packed RGB rows `stride` bytes apart: t[i] = sum_k w[k] *
 * src[k * stride + i], summed in tap order (the reference's); inlined per tap count. */
static inline __attribute__((always_inline)) void
row_k(const uint8_t *restrict src, long stride, const float *w, const int taps, int n,
      float *restrict t)
{
    for (int i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int k = 0; k < taps; k++)
            acc += w[k] * (float)src[k * stride + i];
        t[i] = acc;
    }
}

/* The same for pixels of 4 bytes (the fourth dropped). */
static void row_k4(const uint8_t *src, long stride, const float *w, int taps, int nx,
                   float *restrict t)
{
    for (int x = 0; x < nx; x++)
        for (int c = 0; c < 3; c++) {
            float acc = 0.0f;
            for (int k = 0; k < taps; k++)
                acc += w[k] * (float)src[k * stride + x * 4 + c];
            t[x * 3 + c] = acc;
        }
}

/* Pass 1, the rows: tmp[o][x - x0][c] = sum_k row_w[o][k] * img[row_start[o] + k][x][c],
 * over the kept input columns [x0, x1) only; contiguous over (x, c). */
static void rows_pass(const uint8_t *img, int row_stride, int pix, const int32_t *row_start,
                      const float *row_w, int row_taps, int out_h, int x0, int x1,
                      float *tmp)
{
    const int nx = x1 - x0, n = nx * 3;
    for (int o = 0; o < out_h; o++) {
        const uint8_t *src = img + (long)row_start[o] * row_stride + (long)x0 * pix;
        const float *w = row_w + (long)o * row_taps;
        float *t = tmp + (long)o * n;
        if (pix == 4) {
            row_k4(src, row_stride, w, row_taps, nx, t);
            continue;
        }
        switch (row_taps) {
        case 1: row_k(src, row_stride, w, 1, n, t); break;
        case 2: row_k(src, row_stride, w, 2, n, t); break;
        case 3: row_k(src, row_stride, w, 3, n, t); break;
        case 4: row_k(src, row_stride, w, 4, n, t); break;
        case 5: row_k(src, row_stride, w, 5, n, t); break;
        case 6: row_k(src, row_stride, w, 6, n, t); break;
        default: row_k(src, row_stride, w, row_taps, n, t); break;
        }
    }
}

/* Pass 2, the columns: out[c][o][j] = scale[c] * sum_k col_w[j][k] * tmp[o][s_j + k][c]
 * + shift[c], s_j = col_start[j] - x0; channel c of tmp goes to plane 2 - c with bgr.
 * Inlined per tap count (a constant `taps`: unrolled, the sums kept in registers). */
static inline __attribute__((always_inline)) void
cols_pass_k(const float *tmp, int tmp_w, int out_h, const int32_t *col_start,
            const float *col_w, const int taps, int out_w, int x0, const float *a,
            const float *b, int c0, int c2, float *out)
{
    const long plane = (long)out_h * out_w;
    float *p0 = out + c0 * plane, *p1 = out + plane, *p2 = out + c2 * plane;
    for (int o = 0; o < out_h; o++) {
        const float *row = tmp + (long)o * tmp_w * 3 - (long)x0 * 3;
        for (int j = 0; j < out_w; j++) {
            const float *src = row + (long)col_start[j] * 3;
            const float *w = col_w + (long)j * taps;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
            for (int k = 0; k < taps; k++) {
                s0 += w[k] * src[3 * k];
                s1 += w[k] * src[3 * k + 1];
                s2 += w[k] * src[3 * k + 2];
            }
            long at = (long)o * out_w + j;
            p0[at] = s0 * a[0] + b[0];
            p1[at] = s1 * a[1] + b[1];
            p2[at] = s2 * a[2] + b[2];
        }
    }
}

static void cols_pass(const float *tmp, int tmp_w, int out_h, const int32_t *col_start,
                      const float *col_w, int col_taps, int out_w, int x0,
                      const float *scale3, const float *shift3, int bgr, float *out)
{
    const int c0 = bgr ? 2 : 0, c2 = bgr ? 0 : 2;   /* the planes of tmp's channels 0, 2 */
    const float a[3] = {scale3[c0], scale3[1], scale3[c2]};
    const float b[3] = {shift3[c0], shift3[1], shift3[c2]};
#define MN_TAPS(K) cols_pass_k(tmp, tmp_w, out_h, col_start, col_w, K, out_w, x0, a, b, \
                               c0, c2, out)
    switch (col_taps) {
    case 2: MN_TAPS(2); break;
    case 3: MN_TAPS(3); break;
    case 4: MN_TAPS(4); break;
    case 5: MN_TAPS(5); break;
    case 6: MN_TAPS(6); break;
    default: MN_TAPS(col_taps); break;
    }
#undef MN_TAPS
}

/* img: h x w pixels of `pix` (3 or 4) bytes, rows `row_stride_bytes` apart, the first three
 * bytes of a pixel RGB (BGR input: bgr = 1, stored as is, swapped on output). scale3/shift3
 * are per output channel (RGB order). tmp holds out_h * (x1 - x0) * 3 floats; out_chw 3 *
 * out_h * out_w. Returns 0, or -1 when a tap would read outside the image. */
int mn_resample_u8(const uint8_t *img, int h, int w, int row_stride_bytes, int pix,
                   const int32_t *row_start, const float *row_w, int row_taps, int out_h,
                   const int32_t *col_start, const float *col_w, int col_taps, int out_w,
                   int x0, int x1, const float *scale3, const float *shift3, int bgr,
                   float *tmp, float *out_chw)
{
    if (x0 < 0 || x1 > w || x0 >= x1 || (pix != 3 && pix != 4))
        return -1;
    for (int o = 0; o < out_h; o++)
        if (row_start[o] < 0 || row_start[o] + row_taps > h)
            return -1;
    for (int j = 0; j < out_w; j++)
        if (col_start[j] < x0 || col_start[j] + col_taps > x1)
            return -1;
    rows_pass(img, row_stride_bytes, pix, row_start, row_w, row_taps, out_h, x0, x1, tmp);
    cols_pass(tmp, x1 - x0, out_h, col_start, col_w, col_taps, out_w, x0, scale3, shift3,
              bgr, out_chw);
    return 0;
}

/* Lets the linker of a Python extension (which exports PyInit_<name>) build this file; the
 * library is never imported as a module, only loaded with ctypes. */
void *PyInit__resample(void) { return 0; }
