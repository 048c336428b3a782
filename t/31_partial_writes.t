# What the socket does not take at once is sent when it becomes writable: a burst larger than the
# kernel's send buffer reaches a client that reads late, whole and byte for byte, over HTTP/1.1
# and HTTP/2, with no further publish to push it out. A client that takes nothing for
# send_timeout is timed out and unregistered.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF IPPROTO_TCP pack_sockaddr_in inet_aton);
use SSETest;
use SSEExpect qw(frame);

# Ports 1 (HTTP/1.1) and 2 (HTTP/2): a fixed 32k socket send buffer, so a 150 KB burst takes
# many writes.
my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 16m;
        }
        location = /stuck {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 16m;
            send_timeout 1s;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 0;
        }
        location = /stats {
            sse_stats;
        }
CONF
my $t = SSETest->new(extra_ports => 2, http => <<"CONF", server => $locations)->start;
    client_max_body_size 8m;
    server {
        listen 127.0.0.1:%%PORT1%% sndbuf=32k;
$locations
    }
    server {
        listen 127.0.0.1:%%PORT2%% sndbuf=32k http2;
$locations
    }
CONF

END { local $?; $t->stop if $t }

my $ES = {'Content-Type' => 'text/event-stream'};
my @payloads = map { "burst $_ " . ('x' x 1490) } 1 .. 100;
my $batch = join '', map { "data: $_\n\n" } @payloads;

# The exact body of a stream that received the burst whose last id is $last.
sub expected_body {
    my ($last) = @_;
    my $id = $last - @payloads + 1;
    return ":ok\n\n" . join '', map { frame($id++, $_) } @payloads;
}

# HTTP/1.1: publish the burst while the client is not reading, then read.
my $s = $t->subscribe('/events?topics=burst', port => $t->port(1));
is($s->wait_body(5), ":ok\n\n", 'HTTP/1.1 stream opens');
my $r = $t->request('POST', '/pub?topic=burst', body => $batch, headers => $ES);
is($r->{status}, 202, 'a burst of 100 events of 1.5 KB is published');
my $last = ($r->{body} =~ /"id":"(\d+)"/)[0];
sleep 0.5;    # the socket fills; nothing else is published after this
my $want = expected_body($last);
my $body = $s->wait_body(length $want, 10);
is(length $body, length $want, 'HTTP/1.1: every byte of the burst arrives, with no later publish');
ok($body eq $want, 'HTTP/1.1: byte for byte');
$s->close;

# HTTP/2 (prior knowledge, through curl): the same burst.
SKIP: {
    my $curl = `curl --version 2>/dev/null`;
    skip 'curl without HTTP/2', 2 unless $curl =~ /HTTP2/;
    my $out = "$t->{dir}/h2.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        exec 'curl', '-sN', '--http2-prior-knowledge', '--max-time', '8', '-o', $out,
            'http://127.0.0.1:' . $t->port(2) . '/events?topics=burst2';
    }
    ok(SSETest::wait_until(sub { ($t->stats->{subscribers} // 0) == 1 }, 5), 'HTTP/2 stream registered');
    $r = $t->request('POST', '/pub?topic=burst2', body => $batch, headers => $ES);
    my $last2 = ($r->{body} =~ /"id":"(\d+)"/)[0];
    my $want2 = expected_body($last2);
    SSETest::wait_until(sub { -s $out && -s $out >= length $want2 }, 8);
    kill 'TERM', $pid;
    waitpid $pid, 0;
    open my $fh, '<', $out or die "$out: $!";
    local $/;
    my $got = <$fh>;
    ok($got eq $want2, 'HTTP/2: every byte of the burst arrives, byte for byte')
        or diag(length($got) . ' of ' . length($want2) . ' bytes');
}
$t->stats_until({subscribers => 0}, 5);

# A client that never reads: after send_timeout (1s) with bytes pending, the stream is timed out.
# Its socket has a 4 KB receive buffer, set before connect, and is never read.
socket(my $stuck, PF_INET, SOCK_STREAM, IPPROTO_TCP) or die "socket: $!";
setsockopt($stuck, SOL_SOCKET, SO_RCVBUF, pack('i', 4096)) or die "setsockopt: $!";
connect($stuck, pack_sockaddr_in($t->port(1), inet_aton('127.0.0.1'))) or die "connect: $!";
my $req = "GET /stuck?topics=stuck HTTP/1.1\r\nHost: localhost\r\n\r\n";
syswrite($stuck, $req) == length $req or die "write: $!";
my $st = $t->stats_until({subscribers => 1}, 5);
is($st->{subscribers}, 1, 'the stuck stream is counted');
$r = $t->request('POST', '/pub?topic=stuck', body => $batch, headers => $ES);
is($r->{status}, 202, 'a burst it will never read');
$st = $t->stats_until({subscribers => 0}, 6);
is($st->{subscribers}, 0, 'after send_timeout the stuck stream is gone');
is($st->{slow_disconnects}, 0, 'as a timeout, not a slow-client drop');
like($t->error_log, qr/\[info\].*client timed out reading the stream/, 'an info line says it timed out');

$t->finish;
done_testing;
