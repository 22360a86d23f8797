// DiGraP's and FTP's Adam/AdamW steps for one large float32 tensor on the CPU, each in one
// call: the statistics pass, the per-tensor scalars and the update.
//
// Why not torch.compile: on 63 M parameters DiGraP's compiled kernels take 2.0-2.6x fused
// AdamW and this step 1.65-2.01x in the same runs (benchmarks/bench_optim.py). The loops move the
// same memory; the difference is what runs between them (see vqa_ood_bench/optim/_native.py).
// The statistics pass reads g, theta, theta0, m and v once and does its row sums in the same
// sweep; the update reads g, theta, m and v (theta0 only when the tensor projects) and writes
// theta, m and v. Everything follows vqa_ood_bench/optim/_kernels.py (digrap_adam_stats,
// digrap_adam_update) and digrap.py (_stats_coef, _scalars), which stay the reference: the
// tests compare the two. FTP's step follows ftp_adam_stats / ftp_adam_update and ftp.py
// (_candidate_coef, _radius) in the same way.
//
// Portability: the loops are built for three x86-64 levels (AVX-512, AVX2+FMA, baseline) and
// the loader picks one for the running CPU (GCC/Clang function multi-versioning); other
// architectures get the compiler's default vectorization. Work is split with at::parallel_for,
// so torch.set_num_threads applies.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VOB_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VOB_MULTIVERSION
#endif
#define VOB_INLINE inline __attribute__((always_inline))

namespace {

// eps of the row-wise L2 normalisation in the hyper-gradient (F.normalize's default); the
// same constant as _kernels.NORMALIZE_EPS
constexpr double kNormalizeEps = 1e-12;
// elements per statistics task: 64 KiB per input stream, so a short tensor still splits
constexpr int64_t kChunk = 16384;
// elements per update task
constexpr int64_t kUpdateGrain = 32768;
// the updates walk each thread's range backwards in pieces of this many elements, each piece
// forwards: they start where the statistics pass ended, on what is still in cache. In A/B
// runs against a forward walk, DiGraP's step took 0-6% less time; FTP's between 4% less and
// 5% more. Pieces of 256 KiB per stream keep the hardware prefetchers going: walking FTP's
// rows one by one backwards made its step 10% slower.
constexpr int64_t kBackPiece = 65536;

struct StatsArgs {
  const float *g, *p, *p0, *m, *v;
  float k0, k1, k2, eps;  // lr_{t-1}/(1-b1^(t-1)), 1/(1-b2^(t-1)), 1/(1-lr_{t-1} wd), Adam eps
};

// sums over [lo, hi) of one row: <g,D>, |D|^2, |g|^2, <g,D'>, |D'|^2 with D = theta - theta0
// and D' = theta_{t-1} - theta0, theta_{t-1} = (theta + k0 * m / (sqrt(v * k1) + eps)) * k2
template <bool PREV, bool ANCHOR>
VOB_INLINE void stats_body(const StatsArgs& a, int64_t lo, int64_t hi, double* out) {
  // locals, not the struct's fields: loads through a reference in the loop keep GCC from
  // vectorising it
  const float* __restrict G = a.g;
  const float* __restrict P = a.p;
  const float* __restrict P0 = a.p0;
  const float* __restrict M = a.m;
  const float* __restrict V = a.v;
  const float k0 = a.k0, k1 = a.k1, k2 = a.k2, eps = a.eps;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4)
  for (int64_t i = lo; i < hi; ++i) {
    const float g = G[i], p = P[i];
    const float p0 = ANCHOR ? P0[i] : 0.f;
    const float d = p - p0;
    s0 += g * d;
    s1 += d * d;
    s2 += g * g;
    if (PREV) {
      const float u = M[i] / (std::sqrt(V[i] * k1) + eps);
      const float dp = (p + k0 * u) * k2 - p0;
      s3 += g * dp;
      s4 += dp * dp;
    }
  }
  out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3; out[4] = s4;
}

VOB_MULTIVERSION void stats_chunk(const StatsArgs& a, bool prev, int64_t lo, int64_t hi, double* out) {
  const bool anchor = a.p0 != nullptr;
  if (prev) {
    anchor ? stats_body<true, true>(a, lo, hi, out) : stats_body<true, false>(a, lo, hi, out);
  } else {
    anchor ? stats_body<false, true>(a, lo, hi, out) : stats_body<false, false>(a, lo, hi, out);
  }
}

struct UpdateArgs {
  const float *g, *p0;
  float *p, *m, *v;
  // om1 = 1 - beta1 and om2 = 1 - beta2 come in computed in double, as torch's Adam takes them:
  // 1.f - float(0.999) is 1.3e-5 off 0.001 in relative terms
  float a, b, lr_bc1, bc2, decay, wdc, om1, beta2, om2, eps;
};

// Adam(W) with the applied gradient a*g + b*D + wdc*theta (D = theta - theta0, or theta
// without an anchor), in place
template <bool ANCHOR>
VOB_INLINE void update_body(const UpdateArgs& u, int64_t lo, int64_t hi) {
  const float* __restrict G = u.g;
  const float* __restrict P0 = u.p0;
  float* __restrict P = u.p;
  float* __restrict M = u.m;
  float* __restrict V = u.v;
  const float a = u.a, b = u.b, lr_bc1 = u.lr_bc1, bc2 = u.bc2, decay = u.decay, wdc = u.wdc;
  const float beta2 = u.beta2, om1 = u.om1, om2 = u.om2, eps = u.eps;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const float p = P[i];
    const float d = ANCHOR ? p - P0[i] : p;
    const float gp = a * G[i] + b * d + wdc * p;
    const float mo = M[i], vo = V[i];
    const float mn = mo + (gp - mo) * om1;
    const float vn = vo * beta2 + gp * gp * om2;
    M[i] = mn;
    V[i] = vn;
    P[i] = p * decay - lr_bc1 * mn / (std::sqrt(vn * bc2) + eps);
  }
}

VOB_MULTIVERSION void update_chunk(const UpdateArgs& u, int64_t lo, int64_t hi) {
  u.p0 != nullptr ? update_body<true>(u, lo, hi) : update_body<false>(u, lo, hi);
}

// ---- FTP -----------------------------------------------------------------------------------

struct FtpArgs {
  const float *g, *p0;
  float *p, *m, *v, *cprev;
  float lr_bc1, bc2, decay, wdc, om1, beta2, om2, eps;  // om1, om2: as in UpdateArgs
};

// Adam(W)'s candidate step at element i: the new moments and c = theta_new - theta0
#define VOB_FTP_CANDIDATE                                            \
  const float g = G[i], p = P[i];                                    \
  const float gp = g + wdc * p;                                      \
  const float mo = M[i], vo = V[i];                                  \
  const float mn = mo + (gp - mo) * om1;                             \
  const float vn = vo * beta2 + gp * gp * om2;                       \
  const float pn = p * decay - lr_bc1 * mn / (std::sqrt(vn * bc2) + eps); \
  const float c = ANCHOR ? pn - P0[i] : pn;

#define VOB_FTP_LOCALS                                                                   \
  const float* __restrict G = f.g;                                                       \
  const float* __restrict P0 = f.p0;                                                     \
  float* __restrict P = f.p;                                                             \
  float* __restrict M = f.m;                                                             \
  float* __restrict V = f.v;                                                             \
  float* __restrict CP = f.cprev;                                                        \
  const float lr_bc1 = f.lr_bc1, bc2 = f.bc2, decay = f.decay, wdc = f.wdc, eps = f.eps; \
  const float beta2 = f.beta2, om1 = f.om1, om2 = f.om2;

// sums over [lo, hi) of one row: |c|_1, |c_prev|_1, <g, c_prev> (nothing is written)
template <bool ANCHOR>
VOB_INLINE void ftp_stats_body(const FtpArgs& f, int64_t lo, int64_t hi, double* out) {
  VOB_FTP_LOCALS
  float s0 = 0.f, s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2)
  for (int64_t i = lo; i < hi; ++i) {
    VOB_FTP_CANDIDATE
    const float cp = CP[i];
    s0 += std::fabs(c);
    s1 += std::fabs(cp);
    s2 += g * cp;
  }
  out[0] = s0; out[1] = s1; out[2] = s2;
}

// the candidate step again, projected: theta = theta0 + scale * c, c_prev = c, new moments
template <bool ANCHOR>
VOB_INLINE void ftp_update_body(const FtpArgs& f, float scale, int64_t lo, int64_t hi) {
  VOB_FTP_LOCALS
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    VOB_FTP_CANDIDATE
    M[i] = mn;
    V[i] = vn;
    CP[i] = c;
    P[i] = ANCHOR ? P0[i] + scale * c : scale * c;
  }
}

VOB_MULTIVERSION void ftp_stats_chunk(const FtpArgs& f, int64_t lo, int64_t hi, double* out) {
  f.p0 != nullptr ? ftp_stats_body<true>(f, lo, hi, out) : ftp_stats_body<false>(f, lo, hi, out);
}

VOB_MULTIVERSION void ftp_update_chunk(const FtpArgs& f, float scale, int64_t lo, int64_t hi) {
  f.p0 != nullptr ? ftp_update_body<true>(f, scale, lo, hi) : ftp_update_body<false>(f, scale, lo, hi);
}

// a tensor of `rows` rows cut into (row, chunk) tasks, so that short tensors still split
struct RowTasks {
  int64_t rows, cols, per_row;
  RowTasks(int64_t n, int64_t rows_) : rows(rows_), cols(n / rows_), per_row((n / rows_ + kChunk - 1) / kChunk) {}
  int64_t count() const { return rows * per_row; }
  int64_t grain() const { return std::max<int64_t>(1, kChunk / std::min(cols, kChunk)); }
  int64_t row(int64_t t) const { return t / per_row; }
  int64_t lo(int64_t t) const { return row(t) * cols + (t % per_row) * kChunk; }
  int64_t hi(int64_t t) const { return row(t) * cols + std::min(cols, (t % per_row + 1) * kChunk); }
};

void check_tensor(const torch::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == numel, name, " has ", t.numel(), " elements, expected ", numel);
}

// row `row` of a per-tensor coefficient table (float32 or float64), as doubles
std::vector<double> table_row(const torch::Tensor& table, int64_t row) {
  auto r = table.select(0, row).to(torch::kFloat64).contiguous();
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
}

// The sums of the statistics pass for one tensor viewed as `rows` rows: <g,D>, |D|^2, |g|^2
// and h = sum over rows of c_{t-1} <g_r, D'_r> / (max(|g_r|, eps) * max(|c_{t-1}| |D'_r|, eps))
// (0 without `prev`)
std::array<double, 4> tensor_stats(const StatsArgs& a, int64_t n, int64_t rows, bool prev, double cprev) {
  const RowTasks rt(n, rows);
  // partial sums per task (float within a chunk, as the compiled kernels' vectorised
  // reductions), added up in double here
  std::vector<double> part(rt.count() * 5);
  at::parallel_for(0, rt.count(), rt.grain(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) stats_chunk(a, prev, rt.lo(t), rt.hi(t), &part[t * 5]);
  });
  std::array<double, 4> out{0, 0, 0, 0};
  for (int64_t r = 0; r < rows; ++r) {
    double s[5] = {0, 0, 0, 0, 0};
    for (int64_t c = 0; c < rt.per_row; ++c)
      for (int k = 0; k < 5; ++k) s[k] += part[(r * rt.per_row + c) * 5 + k];
    out[0] += s[0];
    out[1] += s[1];
    out[2] += s[2];
    if (prev) {
      const double gnorm = std::max(std::sqrt(s[2]), kNormalizeEps);
      const double pnorm = std::max(std::abs(cprev) * std::sqrt(s[4]), kNormalizeEps);
      out[3] += cprev * s[3] / (gnorm * pnorm);
    }
  }
  return out;
}

// hyper-parameters, in the order of digrap._native_hparams
struct HParams {
  double lr, mu, omega, two_sided, omega_beta1, omega_beta2, omega_eps, beta1, beta2, eps, weight_decay;
  bool trainable, has_two_sided, decoupled, with_prev;
};

HParams unpack(const std::vector<double>& h) {
  TORCH_CHECK(h.size() == 15, "expected 15 hyper-parameters, got ", h.size());
  return HParams{h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10],
                 h[11] != 0, h[12] != 0, h[13] != 0, h[14] != 0};
}

}  // namespace

// One DiGraP Adam/AdamW step of one float32 tensor, in place: the statistics pass, the
// per-tensor scalars, the update. `table` is the layout's (n, 7) table of per-tensor scalars
// (columns step, omega, omega_exp_avg, omega_exp_avg_sq, proj_coef, prev_lr, prev_decay);
// row `slot` is read, and the tensor's new row is returned (1, 7) in the table's dtype. The
// scalar math mirrors digrap._stats_coef and digrap._scalars for one active tensor.
torch::Tensor digrap_adam_step(const torch::Tensor& g, const torch::Tensor& p, const c10::optional<torch::Tensor>& p0,
                               const torch::Tensor& m, const torch::Tensor& v, const torch::Tensor& table,
                               int64_t slot, int64_t rows, const std::vector<double>& hparams) {
  const int64_t n = p.numel();
  TORCH_CHECK(rows >= 1 && n % rows == 0, "rows must divide the tensor's size");
  for (auto [t, name] : {std::pair{&g, "g"}, {&p, "p"}, {&m, "m"}, {&v, "v"}}) check_tensor(*t, name, n);
  if (p0) check_tensor(*p0, "p0", n);
  const HParams hp = unpack(hparams);
  const auto row = table_row(table, slot);
  TORCH_CHECK(row.size() == 7, "the scalar table must have 7 columns");
  const double t = row[0], omega = row[1], om_m = row[2], om_v = row[3], c_prev = row[4];
  const double prev_lr = row[5], prev_decay = row[6];

  // statistics coefficients (digrap._stats_coef)
  const bool has_prev = t > 0;
  const double k0 = has_prev ? prev_lr / (1.0 - std::pow(hp.beta1, t)) : 0.0;
  const double k1 = has_prev ? 1.0 / (1.0 - std::pow(hp.beta2, t)) : 1.0;
  const double k2 = has_prev ? 1.0 / prev_decay : 1.0;
  StatsArgs sa{g.data_ptr<float>(), p.data_ptr<float>(), p0 ? p0->data_ptr<float>() : nullptr, m.data_ptr<float>(),
               v.data_ptr<float>(), float(k0), float(k1), float(k2), float(hp.eps)};
  const auto st = tensor_stats(sa, n, rows, hp.with_prev, c_prev);
  const double d = st[0], dd = st[1], gg = st[2], h = st[3];

  // per-tensor scalars (digrap._scalars)
  const double tn = t + 1;
  double om = hp.omega, nm = om_m, nv = om_v;
  if (hp.trainable) {
    if (tn == 1) {  // omega starts at 0 and learns from the tensor's second step on
      om = 0.0;
    } else {  // Adam on omega with the hyper-gradient h (common.scalar_adam)
      nm = om_m * hp.omega_beta1 + h * (1.0 - hp.omega_beta1);
      nv = om_v * hp.omega_beta2 + h * h * (1.0 - hp.omega_beta2);
      const double mhat = nm / (1.0 - std::pow(hp.omega_beta1, tn));
      const double vhat = nv / (1.0 - std::pow(hp.omega_beta2, tn));
      om = std::min(1.0, std::max(0.0, omega - hp.mu * mhat / (std::sqrt(vhat) + hp.omega_eps)));
    }
  }
  const double c = d / (dd + 1e-8);
  const bool conflict = d < 0;
  double a = 1.0, b = conflict ? -om * c : 0.0;
  if (hp.has_two_sided) {
    const double lam = hp.two_sided;
    a = conflict ? 1.0 - om * lam * d / (gg + 1e-8) : 1.0;
    b = lam - (conflict ? om * c : 0.0);
  }
  const double decay = hp.decoupled ? 1.0 - hp.lr * hp.weight_decay : 1.0;
  const double wdc = hp.decoupled ? 0.0 : hp.weight_decay;

  // the update; without an anchor buffer D = theta (anchor "origin"), which the loop without
  // an anchor computes; with one and b = 0, D is multiplied by 0 and need not be read
  const bool reads_anchor = p0.has_value() && b != 0.0;
  UpdateArgs u{g.data_ptr<float>(), reads_anchor ? p0->data_ptr<float>() : nullptr, p.data_ptr<float>(),
               m.data_ptr<float>(), v.data_ptr<float>(), float(a), float(b),
               float(hp.lr / (1.0 - std::pow(hp.beta1, tn))), float(1.0 / (1.0 - std::pow(hp.beta2, tn))),
               float(decay), float(wdc), float(1.0 - hp.beta1), float(hp.beta2), float(1.0 - hp.beta2), float(hp.eps)};
  // backwards in kBackPiece pieces (see there)
  at::parallel_for(0, n, kUpdateGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t e = hi; e > lo; e -= kBackPiece) update_chunk(u, std::max(lo, e - kBackPiece), e);
  });
  // written through raw pointers: count the in-place change as torch's own ops would
  for (const torch::Tensor* t : {&p, &m, &v}) t->unsafeGetTensorImpl()->bump_version();

  auto out = torch::empty({1, 7}, torch::kFloat64);
  double* o = out.data_ptr<double>();
  o[0] = tn; o[1] = om; o[2] = nm; o[3] = nv; o[4] = c; o[5] = hp.lr; o[6] = decay;
  return out.to(table.scalar_type());
}

// One FTP Adam/AdamW step of one float32 tensor, in place: the read-only statistics pass over
// the candidate step, the radius, then the candidate step again, projected (writes theta, m,
// v and c_prev). `table`: the layout's (n, 4) table (step, gamma, gamma_exp_avg,
// gamma_exp_avg_sq), row `slot` read; returns the new row (1, 4). Mirrors ftp._candidate_coef,
// ftp._radius and the kernels ftp_adam_stats / ftp_adam_update for one active tensor.
torch::Tensor ftp_adam_step(const torch::Tensor& g, const torch::Tensor& p, const c10::optional<torch::Tensor>& p0,
                            const torch::Tensor& m, const torch::Tensor& v, const torch::Tensor& cprev,
                            const torch::Tensor& table, int64_t slot, int64_t rows, const std::vector<double>& h) {
  const int64_t n = p.numel();
  TORCH_CHECK(rows >= 1 && n % rows == 0, "rows must divide the tensor's size");
  for (auto [t, name] : {std::pair{&g, "g"}, {&p, "p"}, {&m, "m"}, {&v, "v"}, {&cprev, "c_prev"}})
    check_tensor(*t, name, n);
  if (p0) check_tensor(*p0, "p0", n);
  // hyper-parameters, in the order of ftp._native_hparams
  TORCH_CHECK(h.size() == 12, "expected 12 hyper-parameters, got ", h.size());
  const double lr = h[0], k = h[1], mu = h[2], gb1 = h[3], gb2 = h[4], geps = h[5];
  const double beta1 = h[6], beta2 = h[7], eps = h[8], wd = h[9], gamma_min = h[11];
  const bool decoupled = h[10] != 0;
  const auto row = table_row(table, slot);
  TORCH_CHECK(row.size() == 4, "the scalar table must have 4 columns");
  const double tn = row[0] + 1, gamma = row[1], gm = row[2], gv = row[3];

  // candidate coefficients (ftp._candidate_coef)
  const double decay = decoupled ? 1.0 - lr * wd : 1.0;
  FtpArgs f{g.data_ptr<float>(), p0 ? p0->data_ptr<float>() : nullptr, p.data_ptr<float>(), m.data_ptr<float>(),
            v.data_ptr<float>(), cprev.data_ptr<float>(), float(lr / (1.0 - std::pow(beta1, tn))),
            float(1.0 / (1.0 - std::pow(beta2, tn))), float(decay), float(decoupled ? 0.0 : wd), float(1.0 - beta1),
            float(beta2), float(1.0 - beta2), float(eps)};

  // statistics: row norms |c_r|_1 + 1e-8, their max, and sum_r <g_r, c_prev_r> / (|c_prev_r|_1 + 1e-8)
  const RowTasks rt(n, rows);
  std::vector<double> part(rt.count() * 3);
  at::parallel_for(0, rt.count(), rt.grain(), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) ftp_stats_chunk(f, rt.lo(t), rt.hi(t), &part[t * 3]);
  });
  std::vector<double> rownorm(rows);
  double gg = 0.0, max_norm = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double s[3] = {0, 0, 0};
    for (int64_t c = 0; c < rt.per_row; ++c)
      for (int q = 0; q < 3; ++q) s[q] += part[(r * rt.per_row + c) * 3 + q];
    rownorm[r] = s[0] + 1e-8;
    max_norm = std::max(max_norm, rownorm[r]);
    gg += s[2] / (s[1] + 1e-8);
  }

  // the radius (ftp._radius): Adam on gamma, positive hyper-gradients damped by k
  if (gg > 0) gg *= k;
  double new_gamma = gamma_min, nm = gm, nv = gv;
  if (tn != 1) {
    nm = gm * gb1 + gg * (1.0 - gb1);
    nv = gv * gb2 + gg * gg * (1.0 - gb2);
    const double mhat = nm / (1.0 - std::pow(gb1, tn));
    const double vhat = nv / (1.0 - std::pow(gb2, tn));
    new_gamma = std::min(std::max(gamma - mu * mhat / (std::sqrt(vhat) + geps), gamma_min), max_norm);
  }
  new_gamma = std::max(new_gamma, gamma_min);

  // the projected step, row by row
  at::parallel_for(0, rt.count(), rt.grain(), [&](int64_t t0, int64_t t1) {
    const int64_t block = std::max<int64_t>(1, kBackPiece / std::min(rt.cols, kBackPiece));  // tasks per piece
    for (int64_t e = t1; e > t0; e -= block) {  // pieces backwards, as DiGraP's update
      for (int64_t t = std::max(t0, e - block); t < e; ++t) {
        const float scale = float(std::min(1.0, std::max(0.0, new_gamma / rownorm[rt.row(t)])));
        ftp_update_chunk(f, scale, rt.lo(t), rt.hi(t));
      }
    }
  });
  for (const torch::Tensor* t : {&p, &m, &v, &cprev}) t->unsafeGetTensorImpl()->bump_version();

  auto out = torch::empty({1, 4}, torch::kFloat64);
  double* o = out.data_ptr<double>();
  o[0] = tn; o[1] = new_gamma; o[2] = nm; o[3] = nv;
  return out.to(table.scalar_type());
}

// the GIL is released during a step (other Python threads, e.g. a data loader's, keep running)
PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("digrap_adam_step", &digrap_adam_step, py::call_guard<py::gil_scoped_release>());
  mod.def("ftp_adam_step", &ftp_adam_step, py::call_guard<py::gil_scoped_release>());
}
