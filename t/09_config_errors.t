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

# --- sse_heartbeat --------------------------------------------------------------------------
refused('sse_heartbeat bogus', qr/"sse_heartbeat" directive [^\n]*invalid value/,
        http => 'sse_heartbeat bogus;', server => $STREAM, at => 'sse_heartbeat bogus');
refused('sse_heartbeat 5x in a location', qr/"sse_heartbeat" directive [^\n]*invalid value/,
        server => "location = /events {\n sse_subscribe a;\n sse_heartbeat 5x;\n }", at => 'sse_heartbeat 5x');
refused('sse_heartbeat with two values', qr/invalid number of arguments in "sse_heartbeat" directive/,
        server => "location = /events {\n sse_subscribe a;\n sse_heartbeat 1s 2s;\n }", at => 'sse_heartbeat 1s 2s');

# --- sse_shm_size ---------------------------------------------------------------------------
refused('sse_shm_size 1k', qr/"sse_shm_size" directive is too small: the zone needs at least 256k/,
        http => 'sse_shm_size 1k;', server => $STREAM, at => 'sse_shm_size 1k');
refused('sse_shm_size 255k', qr/"sse_shm_size" directive is too small: the zone needs at least 256k/,
        http => 'sse_shm_size 255k;', server => $STREAM, at => 'sse_shm_size 255k');
refused('sse_shm_size twice', qr/"sse_shm_size" directive is duplicate/,
        http => "sse_shm_size 1m;\n    sse_shm_size 2m;", server => $STREAM, at => 'sse_shm_size 2m');
refused('sse_shm_size bogus', qr/"sse_shm_size" directive [^\n]*invalid value/,
        http => 'sse_shm_size lots;', server => $STREAM, at => 'sse_shm_size lots');
refused('sse_shm_size in a server', qr/"sse_shm_size" directive is not allowed here/,
        server => "sse_shm_size 1m;\n$STREAM", at => 'sse_shm_size 1m');

# --- sse_send_buffer ------------------------------------------------------------------------
# (The check may run when locations merge, so the line is not asserted.)
refused('sse_send_buffer 10', qr/"sse_send_buffer"[^\n]*at least 1k/,
        server => "location = /events {\n sse_subscribe a;\n sse_send_buffer 10;\n }");
refused('sse_send_buffer 1023 in http', qr/"sse_send_buffer"[^\n]*at least 1k/,
        http => 'sse_send_buffer 1023;', server => $STREAM);
refused('sse_send_buffer bogus', qr/"sse_send_buffer" directive [^\n]*invalid value/,
        server => "location = /events {\n sse_subscribe a;\n sse_send_buffer big;\n }", at => 'sse_send_buffer big');

# --- sse_max_channels -----------------------------------------------------------------------
refused('sse_max_channels 0', qr/"sse_max_channels" directive [^\n]*between 1 and 1024/,
        server => "location = /events {\n sse_subscribe a;\n sse_max_channels 0;\n }", at => 'sse_max_channels 0');
refused('sse_max_channels 1025', qr/"sse_max_channels" directive [^\n]*between 1 and 1024/,
        http => 'sse_max_channels 1025;', server => $STREAM, at => 'sse_max_channels 1025');
refused('sse_max_channels many', qr/"sse_max_channels" directive [^\n]*invalid/,
        server => "location = /events {\n sse_subscribe a;\n sse_max_channels many;\n }", at => 'sse_max_channels many');

# --- One handler per location ---------------------------------------------------------------
refused('sse_subscribe and sse_publish in one location', qr/"sse_publish"[^\n]*only one of/,
        server => "location = /x {\n sse_subscribe a;\n sse_publish a;\n }", at => 'sse_publish a');
refused('sse_publish and sse_subscribe in one location', qr/"sse_subscribe"[^\n]*only one of/,
        server => "location = /x {\n sse_publish a;\n sse_subscribe a;\n }", at => 'sse_subscribe a');
refused('sse_stats and sse_subscribe in one location', qr/"sse_subscribe"[^\n]*only one of/,
        server => "location = /x {\n sse_stats;\n sse_subscribe a;\n }", at => 'sse_subscribe a');
refused('sse_publish and sse_stats in one location', qr/"sse_stats"[^\n]*only one of/,
        server => "location = /x {\n sse_publish a;\n sse_stats;\n }", at => 'sse_stats');

# --- Channel list values and contexts -------------------------------------------------------
refused('sse_subscribe with an empty string', qr/"sse_subscribe"[^\n]*empty/,
        server => "location = /x {\n sse_subscribe \"\";\n }", at => 'sse_subscribe ""');
refused('sse_publish with an empty string', qr/"sse_publish"[^\n]*empty/,
        server => "location = /x {\n sse_publish '';\n }", at => "sse_publish ''");
refused('sse_subscribe in http context', qr/"sse_subscribe" directive is not allowed here/,
        http => 'sse_subscribe a;', server => $STREAM, at => 'sse_subscribe a;');
refused('sse_publish in server context', qr/"sse_publish" directive is not allowed here/,
        server => "sse_publish a;\n$STREAM", at => 'sse_publish a;');
refused('sse_subscribe without a value', qr/invalid number of arguments in "sse_subscribe" directive/,
        server => "location = /x {\n sse_subscribe;\n }", at => 'sse_subscribe;');
refused('sse_stats with a value', qr/invalid number of arguments in "sse_stats" directive/,
        server => "location = /x {\n sse_stats on;\n }", at => 'sse_stats on');
# (nginx itself reports unknown variables after parsing, without a line.)
refused('sse_subscribe with a bad variable', qr/unknown "no_such_variable_here" variable/, no_line => 1,
        server => "location = /x {\n sse_subscribe \$no_such_variable_here;\n }");

# --- History -----------------------------------------------------------------------------------
refused('sse_history 10000001', qr/"sse_history" directive [^\n]*at most 10000000/,
        http => 'sse_history 10000001;', server => $STREAM, at => 'sse_history 10000001');
refused('sse_history lots', qr/"sse_history" directive [^\n]*invalid/,
        server => "location = /events {\n sse_subscribe a;\n sse_history lots;\n }", at => 'sse_history lots');
refused('sse_history_ttl soon', qr/"sse_history_ttl" directive [^\n]*invalid/,
        http => 'sse_history_ttl soon;', server => $STREAM, at => 'sse_history_ttl soon');
refused('sse_replay -1', qr/"sse_replay" directive [^\n]*invalid/,
        server => "location = /events {\n sse_subscribe a;\n sse_replay -1;\n }", at => 'sse_replay -1');
refused('sse_reset_event with a space', qr/"sse_reset_event" directive [^\n]*needs an event name/,
        http => 'sse_reset_event "gap found";', server => $STREAM, at => 'sse_reset_event');
refused('sse_reset_event twice', qr/"sse_reset_event" directive is duplicate/,
        server => "location = /events {\n sse_subscribe a;\n sse_reset_event a;\n sse_reset_event b;\n }",
        at => 'sse_reset_event b');

# --- Limits and filters -----------------------------------------------------------------------
refused('sse_max_subscribers many', qr/"sse_max_subscribers" directive [^\n]*invalid/,
        http => 'sse_max_subscribers many;', server => $STREAM, at => 'sse_max_subscribers many');
refused('sse_max_subscribers_per_key 0', qr/"sse_max_subscribers_per_key" directive [^\n]*at least 1/,
        server => "location = /events {\n sse_subscribe a;\n sse_max_subscribers_per_key \$remote_addr 0;\n }",
        at => 'sse_max_subscribers_per_key');
refused('sse_max_lifetime soon', qr/"sse_max_lifetime" directive [^\n]*invalid value/,
        http => 'sse_max_lifetime soon;', server => $STREAM, at => 'sse_max_lifetime soon');
refused('sse_max_lifetime jitter too long', qr/"sse_max_lifetime" directive [^\n]*invalid jitter/,
        http => 'sse_max_lifetime 1m 2m;', server => $STREAM, at => 'sse_max_lifetime 1m 2m');
refused('sse_event_filter twice', qr/"sse_event_filter" directive is duplicate/,
        server => "location = /events {\n sse_subscribe a;\n sse_event_filter a;\n sse_event_filter b;\n }",
        at => 'sse_event_filter b');

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
