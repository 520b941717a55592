// Host check of poly_exp2 (csrc/common/utils.cuh), the same source the kernels compile: prints the
// largest relative error against exp2 over x in [-125, 0], then the edge values.
#include <cmath>
#include <cstdio>

#include "common/utils.cuh"

int main() {
  double worst = 0.0, worst_x = 0.0;
  const int steps = 2000000;
  for (int i = 0; i <= steps; ++i) {
    const float x = -125.f * static_cast<float>(i) / steps;
    const double want = std::exp2(static_cast<double>(x));
    const double rel = std::fabs(sessionkit::fwd::poly_exp2(x) / want - 1.0);
    if (rel > worst) worst = rel, worst_x = x;
  }
  std::printf("max_rel_err %.3e at %.6f\n", worst, worst_x);
  const float edges[] = {0.f, -0.5f, -1.f, -125.f, -125.5f, -126.f, -200.f, -INFINITY};
  for (float x : edges) std::printf("edge %g %.9g\n", x, sessionkit::fwd::poly_exp2(x));
  return 0;
}
