# A small runtime image for register.  Build from the repository root after
# building the binary on Debian 12 (the image's libraries must match):
#
#   cmake -S . -B build && cmake --build build
#   docker build -t register .
#   docker run -d --name register --net host \
#     -v /var/run/docker.sock:/var/run/docker.sock -e HOST_IP=10.0.0.5 register
#
# BASE can name a local Debian 12 image made without a registry, e.g. with
# `debootstrap --variant=minbase --include=liblua5.4-0,lua-cjson,libuv1,libcurl4`
# and `docker import` (that is how the tests build it).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# The runtime libraries; a base that already has them needs no network.
RUN if [ ! -e /usr/lib/x86_64-linux-gnu/liblua5.4.so.0 ] || \
       [ ! -e /usr/lib/x86_64-linux-gnu/libuv.so.1 ]; then \
      apt-get update && \
      apt-get install -y --no-install-recommends liblua5.4-0 lua-cjson libuv1 \
        libcurl4 libseccomp2 ca-certificates && \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY build/register /usr/bin/register
# the policy worker, found next to the binary
COPY build/register-worker /usr/bin/register-worker
COPY lua/default.lua /usr/share/register/default.lua
COPY lua/examples/ /usr/share/register/examples/
ENTRYPOINT ["/usr/bin/register"]
