# The module on Debian 12's nginx (docs/installing.md). The build stage makes the Debian package
# with scripts/package.sh; the runtime stage installs it on debian:12-slim with apt, which brings
# Debian's nginx and libhiredis: no compiler, no -dev package. Dockerfile.nginx is the same on the
# official nginx image.
#   docker build -t ngx-http-sse .
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 ngx-http-sse    # http://127.0.0.1:8080/
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN scripts/package.sh && mkdir /out && cp build/deb/libnginx-mod-http-sse_*.deb /out/

FROM debian:12-slim
COPY --from=build /out/ /tmp/deb/
# policy-rc.d: the nginx package would start the service; here only the CMD starts nginx.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/deb/*.deb \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /tmp/deb /usr/sbin/policy-rc.d
COPY conf/container.conf /etc/nginx/sse-demo.conf
COPY conf/html/ /usr/share/nginx/sse-demo/
EXPOSE 8080
# nginx finishes its requests and stops on SIGQUIT (SIGTERM is its fast shutdown).
STOPSIGNAL SIGQUIT
# Runs with a read-only root: docker run --read-only --tmpfs /tmp ...
CMD ["nginx", "-e", "stderr", "-c", "/etc/nginx/sse-demo.conf", "-g", "daemon off;"]
