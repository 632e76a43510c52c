# Sourced by run.sh and test.sh: process settings for CPU hosts.
# glibc's malloc maps each large buffer afresh (XLA:CPU's per-step workspace, ~100 MB for a world model) and
# unmaps it when freed, so every step faults its pages in again, 4 KiB at a time. With glibc.malloc.hugetlb=1
# it asks for transparent huge pages on those mappings: 2 MiB per fault, about 20x fewer faults and ~12% off
# the world's training time (docs/BENCHMARKS.md). Kept if the caller set it; a no-op without glibc >= 2.35.
case ":${GLIBC_TUNABLES:-}:" in
  *:glibc.malloc.hugetlb=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
