//! CPU kernels for the CNN's convolution blocks, plugged into burn as a backend extension
//! (`ConvPool`): a stride-1 'same' convolution followed by a non-overlapping max-pool, forward
//! and gradients (weight, bias and, when it needs one, input), on the flex backend.
//!
//! Why: burn 0.22's flex backend runs the lecture's first layer (10x10 kernel, 1 -> 32 channels,
//! 64x64) at ~17 GFLOP/s forward and its weight gradient as a convolution whose kernel is the
//! whole 64x64 output gradient (~310 ms of a ~550 ms batch-64 step), and the second layer's
//! backward (5x5, 32 -> 64, 16x16) at a third of its forward's speed
//! (`examples/profile_cnn.rs`). Here each image's patch matrix (`C*k*k x H*W`: 1.6 MB for the
//! first layer, 0.8 MB for the second) is built in a per-task buffer that stays in cache and
//! multiplied right away with the `gemm` crate (the one flex uses): forward
//! `W [F, C*k*k] x cols`, weight gradient `cols x dY^T` (the patches are recomputed rather than
//! kept: 105 MB for the first layer of a batch of 64), input gradient `W^T x dY` folded back onto
//! the image (col2im). The max-pool runs on the convolution's output while it is still in cache
//! and keeps each window's argmax, so the full-resolution activation (33 MB for the first layer)
//! and its gradient never exist as tensors: the backward scatters the pooled gradient to the
//! argmaxes in a per-task buffer. The bias is added after pooling (the same values: rounding
//! `v + b` is monotonic in `v`). Per-image weight gradients are summed over the batch in image
//! order, so results do not depend on scheduling.
//!
//! Tests compare values and gradients with burn's `Conv2d` + `MaxPool2d` to 1e-4
//! ([`crate::model`]); the ONNX export captures burn's layers, not these kernels.

use burn::backend::TensorMetadata;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::TensorData;
use rayon::prelude::*;

#[backend_extension(Autodiff, Flex)]
pub trait ConvPool: burn::backend::Backend {
    /// `x [B, C, H, W]`, `weight [F, C, kh, kw]`, `bias [F]` -> `[B, F, H/pool, W/pool]`: a
    /// stride-1 convolution with 'same' padding (`(k-1)/2` before, the rest after, as burn's
    /// `PaddingConfig2d::Same`), then a `pool x pool` max-pool of stride `pool` (floor mode: a
    /// remainder is dropped, as burn's `MaxPool2d`); `pool = 1` is the convolution alone.
    fn conv_same_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pool: usize,
    ) -> FloatTensor<Self>;
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    kh: usize,
    kw: usize,
    pool: usize,
}

impl Dims {
    fn of(x: &FloatTensor<Flex>, weight: &FloatTensor<Flex>, pool: usize) -> Dims {
        let xs = x.shape();
        let ws = weight.shape();
        assert!(
            xs.num_dims() == 4 && ws.num_dims() == 4 && xs[1] == ws[1],
            "conv_same_pool: x must be [B, C, H, W] and weight [F, C, kh, kw], got {xs:?} and {ws:?}"
        );
        Dims {
            b: xs[0],
            c: xs[1],
            h: xs[2],
            w: xs[3],
            f: ws[0],
            kh: ws[2],
            kw: ws[3],
            pool: pool.max(1),
        }
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the patch matrix: `C * kh * kw`.
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Pooled height and width.
    fn out_hw(&self) -> (usize, usize) {
        (self.h / self.pool, self.w / self.pool)
    }
    fn out_per_image(&self) -> usize {
        let (oh, ow) = self.out_hw();
        self.f * oh * ow
    }
}

/// The tensor's values in row-major order (a copy only when it is not contiguous).
fn values(t: &FloatTensor<Flex>) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.clone()
                .into_data()
                .try_into_vec::<f32>()
                .expect("a float32 tensor"),
        ),
    }
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
}

thread_local! {
    /// Per-thread patch matrix and full-resolution convolution buffers, reused across calls
    /// (allocating and zeroing 2 MB per task cost more than the kernels' own memory traffic).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Runs `f` with this thread's scratch buffers of `a` and `b` floats (contents unspecified: every
/// user overwrites them first). `f` must not re-enter (the kernels call no rayon from inside).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let (x, y) = &mut *s;
        if x.len() < a {
            x.resize(a, 0.0);
        }
        if y.len() < b {
            y.resize(b, 0.0);
        }
        f(&mut x[..a], &mut y[..b])
    })
}

/// For output x, input x + j - left is inside the image for x in `[x0, x1)`.
fn valid_x(d: Dims, j: usize) -> (usize, usize) {
    let left = (d.kw - 1) / 2;
    (
        left.saturating_sub(j),
        (d.w + left).saturating_sub(j).min(d.w),
    )
}

/// `cols[(c, i, j), (y, x)] = x_padded[c, y + i, x + j]` of one image (zero outside it).
fn im2col(img: &[f32], d: Dims, cols: &mut [f32]) {
    let (h, w, hw) = (d.h, d.w, d.hw());
    let (top, left) = ((d.kh - 1) / 2, (d.kw - 1) / 2);
    for ch in 0..d.c {
        let plane = &img[ch * hw..(ch + 1) * hw];
        for i in 0..d.kh {
            for j in 0..d.kw {
                let row = &mut cols[((ch * d.kh + i) * d.kw + j) * hw..][..hw];
                let (x0, x1) = valid_x(d, j);
                for y in 0..h {
                    let out = &mut row[y * w..(y + 1) * w];
                    match (y + i).checked_sub(top).filter(|&sy| sy < h) {
                        Some(sy) if x0 < x1 => {
                            out[..x0].fill(0.0);
                            out[x0..x1]
                                .copy_from_slice(&plane[sy * w + x0 + j - left..][..x1 - x0]);
                            out[x1..].fill(0.0);
                        }
                        _ => out.fill(0.0),
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each patch-matrix entry back onto the image position it was
/// read from (`img` is overwritten).
fn col2im(cols: &[f32], d: Dims, img: &mut [f32]) {
    let (h, w, hw) = (d.h, d.w, d.hw());
    let (top, left) = ((d.kh - 1) / 2, (d.kw - 1) / 2);
    img.fill(0.0);
    for ch in 0..d.c {
        let plane = &mut img[ch * hw..(ch + 1) * hw];
        for i in 0..d.kh {
            for j in 0..d.kw {
                let row = &cols[((ch * d.kh + i) * d.kw + j) * hw..][..hw];
                let (x0, x1) = valid_x(d, j);
                if x0 >= x1 {
                    continue;
                }
                for y in 0..h {
                    let Some(sy) = (y + i).checked_sub(top).filter(|&sy| sy < h) else {
                        continue;
                    };
                    let dst = &mut plane[sy * w + x0 + j - left..][..x1 - x0];
                    for (a, v) in dst.iter_mut().zip(&row[y * w + x0..y * w + x1]) {
                        *a += v;
                    }
                }
            }
        }
    }
}

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]`, each operand given by (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_strides.0 + (k - 1) * lhs_strides.1);
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_strides.0 + (n - 1) * rhs_strides.1);
    // SAFETY: the asserts above keep every index the kernel reads or writes inside the slices;
    // dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Max-pools one image's `[f, h*w]` convolution output into `out [f, oh*ow]` (without bias),
/// recording each window's argmax (index into `h*w`; the first of equal values).
fn pool_image(conv: &[f32], d: Dims, out: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = d.out_hw();
    let (w, p) = (d.w, d.pool);
    for (fi, plane) in conv.chunks_exact(d.hw()).enumerate() {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at) = (f32::NEG_INFINITY, (oy * p) * w + ox * p);
                for dy in 0..p {
                    let row = (oy * p + dy) * w + ox * p;
                    for (dx, &v) in plane[row..row + p].iter().enumerate() {
                        if v > best {
                            best = v;
                            at = row + dx;
                        }
                    }
                }
                let o = fi * oh * ow + oy * ow + ox;
                // The max, or the window's first value when none exceeds -inf (all NaN).
                out[o] = plane[at];
                argmax[o] = at as u32;
            }
        }
    }
}

/// Forward: one image per task, `y[b] = pool(W x cols(x[b])) + bias`; also the argmaxes.
fn forward(x: &[f32], weight: &[f32], bias: &[f32], d: Dims) -> (Vec<f32>, Vec<u32>) {
    let (hw, ckk, f) = (d.hw(), d.ckk(), d.f);
    let (oh, ow) = d.out_hw();
    let per = d.out_per_image();
    let mut y = vec![0f32; d.b * per];
    let mut argmax = vec![0u32; d.b * per];
    y.par_chunks_mut(per)
        .zip(argmax.par_chunks_mut(per))
        .zip(x.par_chunks(d.c * hw))
        .for_each(|((yb, ab), xb)| {
            with_scratch(ckk * hw, f * hw, |cols, conv| {
                im2col(xb, d, cols);
                matmul(f, hw, ckk, conv, false, weight, (ckk, 1), cols, (hw, 1));
                pool_image(conv, d, yb, ab);
            });
            for (row, &bf) in yb.chunks_exact_mut(oh * ow).zip(bias) {
                row.iter_mut().for_each(|v| *v += bf);
            }
        });
    (y, argmax)
}

/// Images whose weight gradients one task sums (a fixed partition of the batch, so the order of
/// every sum is the same whatever the scheduling).
const GROUP: usize = 8;

/// Gradients from the pooled gradient. Per image, `dY[b]` is the pooled gradient scattered to
/// the argmaxes; `dW = sum of dY[b] x cols(x[b])^T` and `db` (the pooled gradient summed per
/// filter) are summed over groups of [`GROUP`] images, then over the groups in order;
/// `dx[b] = col2im(W^T x dY[b])` when `input_grad`.
fn grads(
    x: &[f32],
    weight: &[f32],
    dy_pooled: &[f32],
    argmax: &[u32],
    d: Dims,
    input_grad: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (hw, ckk, f) = (d.hw(), d.ckk(), d.f);
    let (oh, ow) = d.out_hw();
    let per = d.out_per_image();
    let img = d.c * hw;
    let groups = d.b.div_ceil(GROUP);
    let acc_len = f * ckk + f;
    let mut per_group = vec![0f32; groups * acc_len];
    let mut dx = vec![0f32; if input_grad { x.len() } else { 0 }];
    // Each task gets its group's dx slice (or an empty one).
    let mut dx_groups: Vec<&mut [f32]> = if input_grad {
        dx.chunks_mut(GROUP * img).collect()
    } else {
        (0..groups).map(|_| Default::default()).collect()
    };
    per_group
        .par_chunks_mut(acc_len)
        .zip(dx_groups.par_iter_mut())
        .enumerate()
        .for_each(|(g, (acc, dxg))| {
            with_scratch(ckk * hw, f * hw, |cols, dy| {
                let (dw_t, db) = acc.split_at_mut(f * ckk);
                for (k, bi) in (g * GROUP..((g + 1) * GROUP).min(d.b)).enumerate() {
                    let (gb, ab) = (&dy_pooled[bi * per..][..per], &argmax[bi * per..][..per]);
                    dy.fill(0.0);
                    for (fi, (g, a)) in gb
                        .chunks_exact(oh * ow)
                        .zip(ab.chunks_exact(oh * ow))
                        .enumerate()
                    {
                        let plane = &mut dy[fi * hw..(fi + 1) * hw];
                        for (&g, &a) in g.iter().zip(a) {
                            plane[a as usize] += g;
                        }
                    }
                    im2col(&x[bi * img..][..img], d, cols);
                    // dW^T [ckk, f] += cols [ckk, hw] x dY^T [hw, f] (dY^T: element (p, q) =
                    // dY[q * hw + p]); this orientation runs faster in gemm than dY x cols^T.
                    matmul(ckk, f, hw, dw_t, k > 0, cols, (hw, 1), dy, (1, hw));
                    for (s, row) in db.iter_mut().zip(gb.chunks_exact(oh * ow)) {
                        *s += row.iter().sum::<f32>();
                    }
                    if !dxg.is_empty() {
                        // dcols [ckk, hw] = W^T [ckk, f] x dY [f, hw], into the patch buffer.
                        matmul(ckk, hw, f, cols, false, weight, (1, ckk), dy, (hw, 1));
                        col2im(cols, d, &mut dxg[k * img..][..img]);
                    }
                }
            })
        });
    drop(dx_groups);
    // Sum the groups in order, then transpose dW^T [ckk, f] into dW [f, ckk].
    let mut sum = vec![0f32; acc_len];
    for acc in per_group.chunks_exact(acc_len) {
        sum.iter_mut().zip(acc).for_each(|(a, v)| *a += v);
    }
    let mut dw = vec![0f32; f * ckk];
    for (q, row) in sum[..f * ckk].chunks_exact(f).enumerate() {
        for (p, v) in row.iter().enumerate() {
            dw[p * ckk + q] = *v;
        }
    }
    let db = sum[f * ckk..].to_vec();
    (dw, db, input_grad.then_some(dx))
}

impl ConvPool for Flex {
    fn conv_same_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pool: usize,
    ) -> FloatTensor<Self> {
        let d = Dims::of(&x, &weight, pool);
        let (y, _) = forward(&values(&x), &values(&weight), &values(&bias), d);
        let (oh, ow) = d.out_hw();
        tensor(y, vec![d.b, d.f, oh, ow])
    }
}

/// Backward step of [`ConvPool::conv_same_pool`].
#[derive(Debug)]
struct ConvPoolBackward;

impl Backward<Flex, 3> for ConvPoolBackward {
    /// The input, the weight, each pooling window's argmax, the shapes.
    type State = (
        FloatTensor<Flex>,
        FloatTensor<Flex>,
        std::sync::Arc<Vec<u32>>,
        Dims,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, argmax, d) = ops.state;
        let (dw, db, dx) = self::grads(
            &values(&x),
            &values(&weight),
            &values(&dy),
            &argmax,
            d,
            node_x.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, vec![d.b, d.c, d.h, d.w]));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, tensor(dw, vec![d.f, d.c, d.kh, d.kw]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, vec![d.f]));
        }
    }
}

impl<C: CheckpointStrategy> ConvPool for Autodiff<Flex, C> {
    fn conv_same_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pool: usize,
    ) -> FloatTensor<Self> {
        match ConvPoolBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp, bp) = (x.primitive(), weight.primitive(), bias.primitive());
                let d = Dims::of(xp, wp, pool);
                let (y, argmax) = forward(&values(xp), &values(wp), &values(bp), d);
                let (oh, ow) = d.out_hw();
                let y = tensor(y, vec![d.b, d.f, oh, ow]);
                prep.finish((xp.clone(), wp.clone(), std::sync::Arc::new(argmax), d), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as ConvPool>::conv_same_pool(
                x.primitive().clone(),
                weight.primitive().clone(),
                bias.primitive().clone(),
                pool,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(c: usize, h: usize, w: usize, k: usize, pool: usize) -> Dims {
        Dims {
            b: 1,
            c,
            h,
            w,
            f: 1,
            kh: k,
            kw: k,
            pool,
        }
    }

    #[test]
    fn im2col_pads_like_same_convolution() {
        // 3x3 image, 2x2 kernel: 'same' pads 0 before and 1 after in each direction.
        let d = dims(1, 3, 3, 2, 1);
        let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut cols = vec![f32::NAN; 4 * 9];
        im2col(&img, d, &mut cols);
        #[rustfmt::skip]
        let expected = [
            1., 2., 3., 4., 5., 6., 7., 8., 9., // (0, 0)
            2., 3., 0., 5., 6., 0., 8., 9., 0., // (0, 1)
            4., 5., 6., 7., 8., 9., 0., 0., 0., // (1, 0)
            5., 6., 0., 8., 9., 0., 0., 0., 0., // (1, 1)
        ];
        assert_eq!(cols, expected);
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for any x and c: two channels, odd kernel.
        let d = dims(2, 4, 5, 3, 1);
        let x: Vec<f32> = (0..2 * 20).map(|v| (v as f32 * 0.37).sin()).collect();
        let c: Vec<f32> = (0..d.ckk() * 20).map(|v| (v as f32 * 0.11).cos()).collect();
        let mut cols = vec![0f32; c.len()];
        im2col(&x, d, &mut cols);
        let lhs: f32 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
        let mut back = vec![f32::NAN; x.len()];
        col2im(&c, d, &mut back);
        let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }

    #[test]
    fn forward_and_gradients_by_hand() {
        // 1 image 2x2, one 1x1 filter of weight 2 and bias 1: y = 2x + 1.
        let mut d = dims(1, 2, 2, 1, 1);
        let x = [1., 2., 3., 4.];
        let (y, argmax) = forward(&x, &[2.], &[1.], d);
        assert_eq!(
            (y, argmax.clone()),
            (vec![3., 5., 7., 9.], vec![0, 1, 2, 3])
        );
        // dL/dW = sum(dy * x), dL/db = sum(dy), dL/dx = 2 dy.
        let (dw, db, dx) = grads(&x, &[2.], &[1., 0., 0., 2.], &argmax, d, true);
        assert_eq!(
            (dw, db, dx),
            (vec![9.], vec![3.], Some(vec![2., 0., 0., 4.]))
        );
        // Pooled 2x2 -> 1x1: the max is at index 3 (x = 4); ties go to the first.
        d.pool = 2;
        let (y, argmax) = forward(&x, &[2.], &[1.], d);
        assert_eq!((y, argmax.clone()), (vec![9.], vec![3]));
        let (dw, db, dx) = grads(&x, &[2.], &[0.5], &argmax, d, true);
        assert_eq!(
            (dw, db, dx),
            (vec![2.], vec![0.5], Some(vec![0., 0., 0., 1.]))
        );
        let (_, argmax) = forward(&[5., 5., 1., 5.], &[1.], &[0.], d);
        assert_eq!(argmax, vec![0]);
    }
}
