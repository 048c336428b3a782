# A stand-in for the official nginx:<version> image, for scripts/docker-test.sh where no image
# registry is reachable: nginx.org's release (nginx-<version>.tar.gz, next to this file in the build
# context) built with the configure options of the official image's nginx, on debian:12-slim, with
# the official image's user, directories and log links. It is not the official image: its nginx is
# not a Debian package and it has no /docker-entrypoint.sh.
ARG NGINX_VERSION
FROM debian:12-slim AS build
ARG NGINX_VERSION
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc make libc6-dev libpcre2-dev libssl-dev zlib1g-dev
COPY nginx-${NGINX_VERSION}.tar.gz /tmp/
RUN mkdir /nginx && tar -xzf /tmp/nginx-${NGINX_VERSION}.tar.gz -C /nginx --strip-components=1 \
    && cd /nginx \
    && ./configure --prefix=/etc/nginx --sbin-path=/usr/sbin/nginx --modules-path=/usr/lib/nginx/modules \
        --conf-path=/etc/nginx/nginx.conf --error-log-path=/var/log/nginx/error.log \
        --http-log-path=/var/log/nginx/access.log --pid-path=/var/run/nginx.pid \
        --lock-path=/var/run/nginx.lock --http-client-body-temp-path=/var/cache/nginx/client_temp \
        --http-proxy-temp-path=/var/cache/nginx/proxy_temp --http-fastcgi-temp-path=/var/cache/nginx/fastcgi_temp \
        --http-uwsgi-temp-path=/var/cache/nginx/uwsgi_temp --http-scgi-temp-path=/var/cache/nginx/scgi_temp \
        --user=nginx --group=nginx --with-compat --with-file-aio --with-threads \
        --with-http_addition_module --with-http_auth_request_module --with-http_dav_module \
        --with-http_flv_module --with-http_gunzip_module --with-http_gzip_static_module \
        --with-http_mp4_module --with-http_random_index_module --with-http_realip_module \
        --with-http_secure_link_module --with-http_slice_module --with-http_ssl_module \
        --with-http_stub_status_module --with-http_sub_module --with-http_v2_module --with-http_v3_module \
        --with-mail --with-mail_ssl_module --with-stream --with-stream_realip_module \
        --with-stream_ssl_module --with-stream_ssl_preread_module \
        --with-cc-opt='-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 -fPIC' \
        --with-ld-opt='-Wl,-z,relro -Wl,-z,now -Wl,--as-needed -pie' >configure.log \
    && make -j"$(nproc)" >make.log \
    && make install DESTDIR=/out >/dev/null \
    && strip /out/usr/sbin/nginx \
    && mkdir -p /out/usr/lib/nginx/modules /out/var/cache/nginx \
    && ln -s /usr/lib/nginx/modules /out/etc/nginx/modules \
    && ln -sf /dev/stdout /out/var/log/nginx/access.log && ln -sf /dev/stderr /out/var/log/nginx/error.log

FROM debian:12-slim
ARG NGINX_VERSION
ENV NGINX_VERSION=${NGINX_VERSION}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libpcre2-8-0 libssl3 zlib1g \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 101 nginx \
    && useradd --system --gid nginx --no-create-home --home /nonexistent --shell /bin/false --uid 101 nginx
COPY --from=build /out/ /
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
