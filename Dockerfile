# Builds the module against Debian 12's nginx and runs it with conf/nginx.conf.
# The steps call the same scripts a person runs, so they cannot drift.
FROM debian:12
WORKDIR /src
COPY . /src
RUN scripts/build.sh
ENV SSE_LISTEN=0.0.0.0:8080
EXPOSE 8080
CMD ["scripts/run.sh"]
