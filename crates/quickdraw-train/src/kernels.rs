//! CPU kernels for the CNN's first layer, plugged into burn as a backend extension (`FirstConv`):
//! a stride-1 'same' convolution over one input channel followed by a non-overlapping max-pool,
//! forward and weight/bias gradients, on the flex backend.
//!
//! Why: burn 0.22's flex backend runs the lecture's first layer (10x10 kernel, 1 -> 32 channels,
//! 64x64) at ~17 GFLOP/s forward and its weight gradient as a convolution whose kernel is the
//! whole 64x64 output gradient (~310 ms of a ~550 ms batch-64 step); expressed with burn's own
//! matmul over a materialised patch matrix (105 MB for a batch of 64) it still took ~150 ms
//! (`examples/profile_cnn.rs`). Here each image's patch matrix (`k*k x H*W`, 1.6 MB) is built in a
//! per-task buffer that stays in cache and multiplied right away with the `gemm` crate (the one
//! flex uses), for the forward (`W [F, k*k] x cols [k*k, H*W]`) and for the weight gradient
//! (`cols x dY^T`, recomputing the patches instead of keeping 105 MB alive). The max-pool runs on
//! the convolution's output while it is still in cache and keeps each window's argmax, so the
//! full-resolution activation (33 MB for a batch of 64) and its gradient never exist as tensors:
//! the backward scatters the pooled gradient to the argmaxes in a per-task buffer. The bias is
//! added after pooling (the same values: rounding `v + b` is monotonic in `v`). Per-image
//! gradients are summed over the batch in image order, so results do not depend on scheduling.
//!
//! The input gets no gradient (it is the image batch): callers must only use this for inputs
//! that do not require one ([`crate::model::conv_one_channel`] checks). Tests compare values and
//! gradients with burn's `Conv2d` to 1e-4.

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
pub trait FirstConv: burn::backend::Backend {
    /// `x [B, 1, H, W]`, `weight [F, 1, kh, kw]`, `bias [F]` -> `[B, F, H/pool, W/pool]`: a
    /// stride-1 convolution with 'same' padding (`(k-1)/2` before, the rest after, as burn's
    /// `PaddingConfig2d::Same`), then a `pool x pool` max-pool of stride `pool` (floor mode: a
    /// remainder is dropped, as burn's `MaxPool2d`); `pool = 1` is the convolution alone.
    fn conv_one_channel_pool(
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
            xs.num_dims() == 4 && xs[1] == 1 && ws.num_dims() == 4 && ws[1] == 1,
            "conv_one_channel_same: x must be [B, 1, H, W] and weight [F, 1, kh, kw], got {xs:?} and {ws:?}"
        );
        Dims {
            b: xs[0],
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
    /// Pooled height and width.
    fn out_hw(&self) -> (usize, usize) {
        (self.h / self.pool, self.w / self.pool)
    }
    fn kk(&self) -> usize {
        self.kh * self.kw
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

/// `cols[(i, j), (y, x)] = x_padded[y + i, x + j]` of one image (zero outside the image).
fn im2col(img: &[f32], d: Dims, cols: &mut [f32]) {
    let (h, w, hw) = (d.h, d.w, d.hw());
    let (top, left) = ((d.kh - 1) / 2, (d.kw - 1) / 2);
    for i in 0..d.kh {
        for j in 0..d.kw {
            let row = &mut cols[(i * d.kw + j) * hw..][..hw];
            // Output x reads input x + j - left: valid for x in [x0, x1).
            let x0 = left.saturating_sub(j);
            let x1 = (w + left).saturating_sub(j).min(w);
            for y in 0..h {
                let out = &mut row[y * w..(y + 1) * w];
                match (y + i).checked_sub(top).filter(|&sy| sy < h) {
                    Some(sy) if x0 < x1 => {
                        out[..x0].fill(0.0);
                        out[x0..x1].copy_from_slice(&img[sy * w + x0 + j - left..][..x1 - x0]);
                        out[x1..].fill(0.0);
                    }
                    _ => out.fill(0.0),
                }
            }
        }
    }
}

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]`, each given by (row stride, column stride).
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
    let (hw, kk, f) = (d.hw(), d.kk(), d.f);
    let (oh, ow) = d.out_hw();
    let per = f * oh * ow;
    let mut y = vec![0f32; d.b * per];
    let mut argmax = vec![0u32; d.b * per];
    y.par_chunks_mut(per)
        .zip(argmax.par_chunks_mut(per))
        .zip(x.par_chunks(hw))
        .for_each_init(
            || (vec![0f32; kk * hw], vec![0f32; f * hw]),
            |(cols, conv), ((yb, ab), xb)| {
                im2col(xb, d, cols);
                matmul(f, hw, kk, conv, false, weight, (kk, 1), cols, (hw, 1));
                pool_image(conv, d, yb, ab);
                for (row, &bf) in yb.chunks_exact_mut(oh * ow).zip(bias) {
                    row.iter_mut().for_each(|v| *v += bf);
                }
            },
        );
    (y, argmax)
}

/// Weight and bias gradients from the pooled gradient: per image, `dY[b]` is the pooled
/// gradient scattered to the argmaxes, `dW[b] = dY[b] x cols(x[b])^T` and `db[b]` the sum of
/// the pooled gradient per filter; then summed over the batch in image order.
fn weight_grads(x: &[f32], dy_pooled: &[f32], argmax: &[u32], d: Dims) -> (Vec<f32>, Vec<f32>) {
    let (hw, kk, f) = (d.hw(), d.kk(), d.f);
    let (oh, ow) = d.out_hw();
    let per = f * oh * ow;
    let mut per_image = vec![0f32; d.b * (f * kk + f)];
    per_image
        .par_chunks_mut(f * kk + f)
        .zip(x.par_chunks(hw))
        .zip(dy_pooled.par_chunks(per).zip(argmax.par_chunks(per)))
        .for_each_init(
            || (vec![0f32; kk * hw], vec![0f32; f * hw]),
            |(cols, dy), ((out, xb), (gb, ab))| {
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
                im2col(xb, d, cols);
                let (dw, db) = out.split_at_mut(f * kk);
                // dW^T [kk, f] = cols [kk, hw] x dY^T [hw, f] (dY^T: element (p, q) = dY[q * hw
                // + p]); this orientation runs faster in gemm than dY x cols^T.
                matmul(kk, f, hw, dw, false, cols, (hw, 1), dy, (1, hw));
                for (s, row) in db.iter_mut().zip(gb.chunks_exact(oh * ow)) {
                    *s = row.iter().sum();
                }
            },
        );
    let mut dw = vec![0f32; f * kk];
    let mut db = vec![0f32; f];
    for img in per_image.chunks_exact(f * kk + f) {
        // img[..f * kk] is dW^T: [kk, f].
        for (q, row) in img[..f * kk].chunks_exact(f).enumerate() {
            for (p, v) in row.iter().enumerate() {
                dw[p * kk + q] += v;
            }
        }
        db.iter_mut().zip(&img[f * kk..]).for_each(|(a, v)| *a += v);
    }
    (dw, db)
}

impl FirstConv for Flex {
    fn conv_one_channel_pool(
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

/// Backward step: gradients of the weight and bias (the input is a constant).
#[derive(Debug)]
struct FirstConvBackward;

impl Backward<Flex, 3> for FirstConvBackward {
    /// The input, each pooling window's argmax, the shapes.
    type State = (FloatTensor<Flex>, std::sync::Arc<Vec<u32>>, Dims);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [_node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, argmax, d) = ops.state;
        let (dw, db) = weight_grads(&values(&x), &values(&dy), &argmax, d);
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, tensor(dw, vec![d.f, 1, d.kh, d.kw]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, vec![d.f]));
        }
    }
}

impl<C: CheckpointStrategy> FirstConv for Autodiff<Flex, C> {
    fn conv_one_channel_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pool: usize,
    ) -> FloatTensor<Self> {
        match FirstConvBackward
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
                prep.finish((xp.clone(), std::sync::Arc::new(argmax), d), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as FirstConv>::conv_one_channel_pool(
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

    #[test]
    fn im2col_pads_like_same_convolution() {
        // 3x3 image, 2x2 kernel: 'same' pads 0 before and 1 after in each direction.
        let d = Dims {
            b: 1,
            h: 3,
            w: 3,
            f: 1,
            kh: 2,
            kw: 2,
            pool: 1,
        };
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
    fn forward_and_gradients_by_hand() {
        // 1 image 2x2, one 1x1 filter of weight 2 and bias 1: y = 2x + 1.
        let mut d = Dims {
            b: 1,
            h: 2,
            w: 2,
            f: 1,
            kh: 1,
            kw: 1,
            pool: 1,
        };
        let x = [1., 2., 3., 4.];
        let (y, argmax) = forward(&x, &[2.], &[1.], d);
        assert_eq!(
            (y, argmax.clone()),
            (vec![3., 5., 7., 9.], vec![0, 1, 2, 3])
        );
        // dL/dW = sum(dy * x), dL/db = sum(dy).
        let (dw, db) = weight_grads(&x, &[1., 0., 0., 2.], &argmax, d);
        assert_eq!((dw, db), (vec![9.], vec![3.]));
        // Pooled 2x2 -> 1x1: the max is at index 3 (x = 4), ties go to the first.
        d.pool = 2;
        let (y, argmax) = forward(&x, &[2.], &[1.], d);
        assert_eq!((y, argmax.clone()), (vec![9.], vec![3]));
        let (dw, db) = weight_grads(&x, &[0.5], &argmax, d);
        assert_eq!((dw, db), (vec![2.], vec![0.5]));
        let (_, argmax) = forward(&[5., 5., 1., 5.], &[1.], &[0.], d);
        assert_eq!(argmax, vec![0]);
    }
}
