# Worker and producer image for NVIDIA GPUs (CUDA 12.4, compute capability
# set by CUDA_COMPUTE_CAP: 80 = A100, 86 = RTX 30xx/A10, 89 = L4/RTX 40xx,
# 90 = H100/H200).
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04 AS build
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:${PATH}
WORKDIR /src
COPY . .
RUN cargo build --release -p worker -p producer --features worker/cuda,worker/hub

FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcublas-12-4 libcurand-12-4 libopenblas0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/worker /src/target/release/producer /usr/local/bin/
COPY sweeps /sweeps
# An unprivileged user (uid 10001): the Kubernetes manifest runs it with a
# read-only root filesystem, its spool and temporary files on volumes.
RUN useradd --system --uid 10001 --user-group --home-dir /tmp --no-create-home worker
USER 10001:10001
ENTRYPOINT ["worker"]
CMD ["serve", "--devices", "cuda:0"]
