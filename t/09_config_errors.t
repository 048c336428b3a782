# nginx -t refuses bad uses of the directives with nginx-style [emerg] messages naming the
# directive (and the line), and accepts a good configuration.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $STREAM = "location = /events {\n            sse_subscribe \$arg_topics;\n        }";

# Line number (1-based) of the first line of the written nginx.conf that contains $needle.
sub line_of {
    my ($t, $needle) = @_;
    open my $fh, '<', $t->dir . '/nginx.conf' or die $!;
    my $n = 0;
    while (my $l = <$fh>) {
        $n++;
        return $n if index($l, $needle) >= 0;
    }
    return undef;
}

# Expects nginx -t to fail with $re in an [emerg] line; if $at is given, the line must point
# at the conf line holding $at.
sub refused {
    my ($label, $re, %o) = @_;
    my $at = delete $o{at};
    my $no_line = delete $o{no_line};
    my $t = SSETest->new(%o);
    my ($rc, $out) = $t->test_conf;
    isnt($rc, 0, "$label: nginx -t fails");
    like($out, qr/\[emerg\]/, "$label: [emerg]");
    my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
    $line //= '';
    like($line, $re, "$label: message") or diag($out);
    like($line, qr/ in \Q${\ $t->dir}\E\/nginx\.conf:\d+$/, "$label: message names the file and line")
        unless $no_line;
    if (defined $at) {
        my $want = line_of($t, $at);
        my ($got) = $line =~ /nginx\.conf:(\d+)$/;
        is($got, $want, "$label: the line is that of the offending directive");
    }
    like($out, qr/test failed/, "$label: nginx says the test failed");
    return $out;
}

sub accepted {
    my ($label, %o) = @_;
    my $t = SSETest->new(%o);
    my ($rc, $out) = $t->test_conf;
    is($rc, 0, "$label: nginx -t passes") or diag($out);
    like($out, qr/syntax is ok/, "$label: syntax is ok");
    like($out, qr/test is successful/, "$label: test is successful");
    unlike($out, qr/\[(emerg|alert|crit)\]/, "$label: no [emerg]");
}

# A bad value: nginx -t fails with `invalid value "<shown>" in "<directive>" directive`, at the
# directive's own line. $where: 'http' (the http block), 'location' (a subscribing location) or
# 'handler' (a location of its own, for the directives that set its handler).
sub invalid {
    my ($directive, $args, $shown, $where, %o) = @_;
    my $label = delete $o{label} // "$directive $args";
    my $line = "$directive $args;";
    my %conf =
          $where eq 'http'     ? (http => $line, server => $STREAM)
        : $where eq 'location' ? (server => "location = /events {\n sse_subscribe a;\n $line\n }")
        :                        (server => "location = /x {\n $line\n }");
    my $why = delete $o{why} // qr//;
    return refused($label, qr/invalid value "\Q$shown\E" in "\Q$directive\E" directive, [^\n]*$why/,
            %conf, at => "$directive $args", %o);
}

# --- sse_heartbeat --------------------------------------------------------------------------
invalid('sse_heartbeat', 'bogus', 'bogus', 'http', why => qr/time such as 30s, or off/);
invalid('sse_heartbeat', '5x', '5x', 'location');
invalid('sse_heartbeat', '0', '0', 'location');
refused('sse_heartbeat with two values', qr/invalid number of arguments in "sse_heartbeat" directive/,
        server => "location = /events {\n sse_subscribe a;\n sse_heartbeat 1s 2s;\n }", at => 'sse_heartbeat 1s 2s');

# --- sse_retry ------------------------------------------------------------------------------
invalid('sse_retry', 'soon', 'soon', 'http', why => qr/time such as 30s/);
invalid('sse_retry', '-1s', '-1s', 'location');

# --- sse_shm_size ---------------------------------------------------------------------------
invalid('sse_shm_size', '1k', '1k', 'http', why => qr/at least 256k/);
invalid('sse_shm_size', '255k', '255k', 'http', why => qr/at least 256k/);
invalid('sse_shm_size', 'lots', 'lots', 'http', why => qr/size such as 32m/);
refused('sse_shm_size twice', qr/"sse_shm_size" directive is duplicate/,
        http => "sse_shm_size 1m;\n    sse_shm_size 2m;", server => $STREAM, at => 'sse_shm_size 2m');
refused('sse_shm_size in a server', qr/"sse_shm_size" directive is not allowed here/,
        server => "sse_shm_size 1m;\n$STREAM", at => 'sse_shm_size 1m');

# --- sse_send_buffer ------------------------------------------------------------------------
invalid('sse_send_buffer', '10', '10', 'location', why => qr/at least 1024/);
invalid('sse_send_buffer', '1023', '1023', 'http', why => qr/at least 1024/);
invalid('sse_send_buffer', 'big', 'big', 'location', why => qr/size such as 64k/);

# --- sse_max_channels -----------------------------------------------------------------------
invalid('sse_max_channels', '0', '0', 'location', why => qr/between 1 and 1024/);
invalid('sse_max_channels', '1025', '1025', 'http', why => qr/between 1 and 1024/);
invalid('sse_max_channels', 'many', 'many', 'location', why => qr/a number/);

# --- One handler per location ---------------------------------------------------------------
refused('sse_subscribe and sse_publish in one location', qr/"sse_publish"[^\n]*only one of/,
        server => "location = /x {\n sse_subscribe a;\n sse_publish a;\n }", at => 'sse_publish a');
refused('sse_publish and sse_subscribe in one location', qr/"sse_subscribe"[^\n]*only one of/,
        server => "location = /x {\n sse_publish a;\n sse_subscribe a;\n }", at => 'sse_subscribe a');
refused('sse_stats and sse_subscribe in one location', qr/"sse_subscribe"[^\n]*only one of/,
        server => "location = /x {\n sse_stats;\n sse_subscribe a;\n }", at => 'sse_subscribe a');
refused('sse_publish and sse_stats in one location', qr/"sse_stats"[^\n]*only one of/,
        server => "location = /x {\n sse_publish a;\n sse_stats;\n }", at => 'sse_stats');
refused('sse_clients and sse_publish_user in one location', qr/"sse_publish_user"[^\n]*only one of/,
        server => "location = /x {\n sse_clients;\n sse_publish_user \$arg_user;\n }", at => 'sse_publish_user');

# --- Channel list values and contexts -------------------------------------------------------
invalid('sse_subscribe', '""', '', 'handler', why => qr/channel list/);
invalid('sse_publish', "''", '', 'handler', why => qr/channel list/);
invalid('sse_publish_client', '""', '', 'handler', why => qr/\$arg_client/);
invalid('sse_publish_user', "''", '', 'handler');
refused('sse_subscribe in http context', qr/"sse_subscribe" directive is not allowed here/,
        http => 'sse_subscribe a;', server => $STREAM, at => 'sse_subscribe a;');
refused('sse_publish in server context', qr/"sse_publish" directive is not allowed here/,
        server => "sse_publish a;\n$STREAM", at => 'sse_publish a;');
refused('sse_subscribe without a value', qr/invalid number of arguments in "sse_subscribe" directive/,
        server => "location = /x {\n sse_subscribe;\n }", at => 'sse_subscribe;');
# (sse_stats and sse_clients take no value: nginx itself refuses one, naming the directive.)
refused('sse_stats with a value', qr/invalid number of arguments in "sse_stats" directive/,
        server => "location = /x {\n sse_stats on;\n }", at => 'sse_stats on');
refused('sse_clients with a value', qr/invalid number of arguments in "sse_clients" directive/,
        server => "location = /x {\n sse_clients all;\n }", at => 'sse_clients all');
# (nginx itself reports unknown variables after parsing, without a line.)
refused('sse_subscribe with a bad variable', qr/unknown "no_such_variable_here" variable/, no_line => 1,
        server => "location = /x {\n sse_subscribe \$no_such_variable_here;\n }");

# --- History -----------------------------------------------------------------------------------
invalid('sse_history', '10000001', '10000001', 'http', why => qr/between 0 and 10000000/);
invalid('sse_history', 'lots', 'lots', 'location', why => qr/a number/);
invalid('sse_history_ttl', 'soon', 'soon', 'http', why => qr/time such as 30s/);
invalid('sse_replay', '-1', '-1', 'location', why => qr/a number/);
invalid('sse_replay', '10000001', '10000001', 'location', why => qr/between 0 and 10000000/);
invalid('sse_reset_event', '"gap found"', 'gap found', 'http', why => qr/event name[^\n]* or off/);
invalid('sse_reset_event', '""', '', 'location', why => qr/event name/);
refused('sse_reset_event twice', qr/"sse_reset_event" directive is duplicate/,
        server => "location = /events {\n sse_subscribe a;\n sse_reset_event a;\n sse_reset_event b;\n }",
        at => 'sse_reset_event b');
refused('sse_reset_event off twice', qr/"sse_reset_event" directive is duplicate/,
        server => "location = /events {\n sse_subscribe a;\n sse_reset_event off;\n sse_reset_event b;\n }",
        at => 'sse_reset_event b');

# --- Limits and filters -----------------------------------------------------------------------
invalid('sse_max_subscribers', 'many', 'many', 'http', why => qr/a number/);
invalid('sse_max_subscribers_per_key', '$remote_addr 0', '0', 'location', why => qr/at least 1/);
invalid('sse_max_subscribers_per_key', '$remote_addr some', 'some', 'http');
invalid('sse_max_lifetime', 'soon', 'soon', 'http', why => qr/time such as 30m/);
invalid('sse_max_lifetime', '1m 2m', '2m', 'http', why => qr/jitter[^\n]*shorter than the lifetime/);
my $many_types = join ',', map { "t$_" } 1 .. 33;
invalid('sse_event_filter', $many_types, $many_types, 'location', why => qr/at most 32/,
        label => 'sse_event_filter with 33 types');
refused('sse_event_filter twice', qr/"sse_event_filter" directive is duplicate/,
        server => "location = /events {\n sse_subscribe a;\n sse_event_filter a;\n sse_event_filter b;\n }",
        at => 'sse_event_filter b');
invalid('sse_subscribe_allow', 'public.* ""', '', 'location', why => qr/channel name or pattern/);

# --- Client identity --------------------------------------------------------------------------
invalid('sse_user', '""', '', 'location', why => qr/\$user_id/);
invalid('sse_client_channel', 'yes', 'yes', 'location', why => qr/"on" or "off"/);
invalid('sse_subscribe_patterns', 'maybe', 'maybe', 'http', why => qr/"on" or "off"/);
invalid('sse_direct_write', 'maybe', 'maybe', 'location', why => qr/it must be "on" or "off"/);
invalid('sse_connected_event', '""', '', 'location', why => qr/event name[^\n]* or off/);
my $long_name = 'x' x 129;
invalid('sse_connected_event', $long_name, $long_name, 'http', label => 'sse_connected_event of 129 bytes');
refused('sse_connected_event twice', qr/"sse_connected_event" directive is duplicate/,
        server => "location = /events {\n sse_subscribe a;\n sse_connected_event off;\n sse_connected_event hello;\n }",
        at => 'sse_connected_event hello');

# --- Redis --------------------------------------------------------------------------------------
invalid('sse_redis', 'http://127.0.0.1:6379', 'http://127.0.0.1:6379', 'http',
        why => qr/redis:\/\/, rediss:\/\/, redis-sentinel:\/\/ or unix:/);
invalid('sse_redis', 'redis-sentinel://127.0.0.1:26379', 'redis-sentinel://127.0.0.1:26379', 'http',
        why => qr/ends with \/<master-name>/);
invalid('sse_redis', 'redis-sentinel://:pw@127.0.0.1:26379,/primary', 'redis-sentinel://***@127.0.0.1:26379,/primary',
        'http', why => qr/names no host/);
invalid('sse_redis', 'rediss://no-such-host.invalid:6380', 'rediss://no-such-host.invalid:6380', 'http',
        why => qr/cannot resolve "no-such-host.invalid"/);
invalid('sse_redis_tls_verify', 'maybe', 'maybe', 'http', why => qr/it must be "on" or "off"/);
refused('sse_redis_tls_certificate without its key',
        qr/no "sse_redis_tls_certificate_key" is defined for certificate "\/etc\/ssl\/certs\/x.pem"/,
        http => "sse_redis rediss://127.0.0.1:6380;\n    sse_redis_tls_certificate /etc/ssl/certs/x.pem;",
        server => $STREAM);
refused('sse_redis_tls_trusted_certificate that does not exist', qr/no-such-ca\.pem/,
        http => "sse_redis rediss://127.0.0.1:6380;\n    sse_redis_tls_trusted_certificate /nonexistent/no-such-ca.pem;",
        server => $STREAM, no_line => 1);
invalid('sse_redis', 'unix:redis.sock', 'unix:redis.sock', 'http', why => qr/absolute path/);
# Several URLs: the seeds of a Redis Cluster.
invalid('sse_redis', 'redis://127.0.0.1:7000 redis-sentinel://127.0.0.1:26379/m', 'redis-sentinel://127.0.0.1:26379/m',
        'http', why => qr/several URLs name the seeds of a Redis Cluster: each is redis:\/\/ or rediss:\/\/ with a host/);
invalid('sse_redis', 'unix:/run/redis.sock redis://127.0.0.1:7001', 'redis://127.0.0.1:7001', 'http',
        why => qr/several URLs name the seeds of a Redis Cluster/);
invalid('sse_redis', 'redis://127.0.0.1:7000 rediss://127.0.0.1:7001', 'rediss://127.0.0.1:7001', 'http',
        why => qr/the seeds of a Redis Cluster share the first URL's scheme and credentials/);
unlike(invalid('sse_redis', 'redis://:a\@127.0.0.1:7000 redis://:b\@127.0.0.1:7001', 'redis://***@127.0.0.1:7001', 'http',
               why => qr/share the first URL's scheme and credentials/, label => 'sse_redis seeds with other credentials'),
       qr/:b\@/, 'sse_redis seeds with other credentials: the password is not echoed');
invalid('sse_redis', 'redis://127.0.0.1:7000/1 redis://127.0.0.1:7001', 'redis://127.0.0.1:7001', 'http',
        why => qr/a Redis Cluster has only database 0/);
invalid('sse_redis', 'redis://127.0.0.1:7000 redis://127.0.0.1:99999', 'redis://127.0.0.1:99999', 'http', why => qr/port/);
# Credentials are not echoed.
unlike(invalid('sse_redis', 'redis://:s3cret@127.0.0.1:99999', 'redis://***@127.0.0.1:99999', 'http',
               why => qr/port/, label => 'sse_redis with a password and a bad port'),
       qr/s3cret/, 'sse_redis with a password and a bad port: the password is not echoed');
invalid('sse_redis_prefix', '"a b"', 'a b', 'http', why => qr/spaces/);
invalid('sse_redis_connect_timeout', '0', '0', 'http', why => qr/above zero/);
invalid('sse_redis_connect_timeout', 'soon', 'soon', 'http', why => qr/time such as 30s/);
invalid('sse_redis_command_timeout', '0ms', '0ms', 'http', why => qr/above zero/);
invalid('sse_redis_reconnect', '0 3s', '0', 'http', why => qr/first delay/);
invalid('sse_redis_reconnect', '3s 1s', '1s', 'http', why => qr/longest delay/);
invalid('sse_redis_reconnect', 'soon 3s', 'soon', 'http');
invalid('sse_redis_queue', '0', '0', 'http', why => qr/between 1 and 10000000/);
invalid('sse_redis_queue', '10000001', '10000001', 'http', why => qr/between 1 and 10000000/);
invalid('sse_redis_queue', 'lots', 'lots', 'http', why => qr/a number/);
invalid('sse_redis_sync_timeout', 'soon', 'soon', 'http', why => qr/time such as 30s/);

# --- A good configuration -------------------------------------------------------------------
accepted('good configuration',
         http => "sse_shm_size 256k;\n    sse_heartbeat off;\n    sse_send_buffer 1k;\n    sse_max_channels 1024;\n    sse_retry 3s;\n    sse_history 50;\n    sse_history_ttl 10m;\n    sse_replay 5;\n    sse_reset_event reset;",
         server => <<'CONF');
        sse_heartbeat 15s;
        sse_max_channels 1;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat 500ms;
            sse_retry 2500ms;
            sse_send_buffer 64k;
            sse_max_channels 32;
        }
        location = /fixed {
            sse_subscribe "news,sport";
            sse_replay 10;
            sse_reset_event off;
        }
        location = /resume {
            sse_subscribe $arg_topics;
            sse_reset_event history.lost;
            sse_event_filter $arg_types;
            sse_max_subscribers 1000;
            sse_max_subscribers_per_key $remote_addr 10;
            sse_max_lifetime 30m 5m;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 0;
        }
        location = /pub-kept {
            sse_publish $arg_topic;
            sse_history 1000;
            sse_history_ttl 0;
        }
        location = /stats {
            sse_stats;
        }
CONF
accepted('minimal configuration', server => $STREAM);
accepted('Redis through sentinels', server => $STREAM,
         http => "sse_redis \"redis-sentinel://:pw\@127.0.0.1:26379,[::1]:26380,127.0.0.1/mymaster?db=1\";");
accepted('the seeds of a Redis Cluster', server => $STREAM,
         http => "sse_redis redis://:pw\@127.0.0.1:7000 redis://:pw\@127.0.0.1:7001 redis://:pw\@[::1]:7002;");
accepted('Redis over TLS with the system CAs', server => $STREAM, http => "sse_redis rediss://127.0.0.1:6380;");
accepted('Redis over TLS with a CA file', server => $STREAM,
         http => "sse_redis rediss://localhost;\n    sse_redis_tls_trusted_certificate /etc/ssl/certs/ca-certificates.crt;");
accepted('Redis and client identity settings',
         http => "sse_redis unix:/run/no-such-redis.sock?db=2;\n    sse_redis_prefix app:;\n    sse_redis_connect_timeout 1s;\n    sse_redis_command_timeout 2s;\n    sse_redis_reconnect 50ms 1s;\n    sse_redis_queue 10000000;\n    sse_redis_sync_timeout 0;\n    sse_redis_tls_verify off;\n    sse_redis_tls_server_name redis.internal;\n    sse_connected_event hello;\n    sse_reset_event off;",
         server => <<'CONF');
        location = /events {
            sse_subscribe $arg_topics;
            sse_user $arg_user;
            sse_client_channel on;
            sse_subscribe_patterns on;
            sse_connected_event off;
            sse_subscribe_allow public.* "user:$arg_user";
            sse_max_channels 1;
            sse_send_buffer 1024;
        }
        location = /to-client {
            sse_publish_client $arg_client;
        }
        location = /to-user {
            sse_publish_user $arg_user;
        }
        location = /clients {
            sse_clients;
        }
CONF

# A good configuration actually starts and serves.
my $live;
# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $live->stop if $live }
{
    my $t = $live = SSETest->new(http => 'sse_shm_size 256k;', server => "$STREAM\n        location = /stats { sse_stats; }");
    $t->start;
    my $st = $t->get_json('/stats');
    is($st->{zone_bytes_total} > 0 && $st->{zone_bytes_total} <= 256 * 1024 ? 1 : 0, 1,
       'sse_shm_size 256k: the zone is at most 256k') or diag("zone_bytes_total $st->{zone_bytes_total}");
    $t->finish;
}

done_testing;
