# Streams over HTTP/1.0 (close-delimited), HTTP/2 (h2c, via curl), with add_header, and HEAD.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use SSETest;

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            add_header X-Test yes always;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $t = SSETest->new(extra_ports => 1, server => $locations, http => <<"CONF")->start;
    server {
        listen 127.0.0.1:%%PORT1%% http2;
$locations
    }
CONF

sub stats { $t->stats }
sub stats_until { $t->stats_until(@_) }

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    binmode $fh;
    local $/;
    my $text = <$fh>;
    return $text // '';
}

# --- HTTP/1.0: no chunked encoding, the body is delimited by the connection's close.
{
    my $s = $t->subscribe('/events?topics=p10', http10 => 1);
    is($s->status, 200, 'HTTP/1.0 stream: 200');
    is($s->header('Content-Type'), 'text/event-stream', 'HTTP/1.0 stream: Content-Type');
    is($s->header('Cache-Control'), 'no-cache', 'HTTP/1.0 stream: Cache-Control');
    is($s->header('X-Accel-Buffering'), 'no', 'HTTP/1.0 stream: X-Accel-Buffering');
    ok(!defined $s->header('Transfer-Encoding'), 'HTTP/1.0 stream: no Transfer-Encoding');
    ok(!defined $s->header('Content-Length'), 'HTTP/1.0 stream: no Content-Length');
    is($s->header('X-Test'), 'yes', 'HTTP/1.0 stream: add_header applies');
    is($s->wait_body(5), ":ok\n\n", 'HTTP/1.0 stream: opens with :ok, unframed');

    my $r1 = $t->publish('/pub?topic=p10&event=e1', "line one\nline two");
    my $r2 = $t->publish('/pub?topic=p10', '');
    my $want = ":ok\n\n" . "id: $r1->{id}\nevent: e1\ndata: line one\ndata: line two\n\n" . "id: $r2->{id}\ndata:\n\n";
    is($s->wait_body(length $want, 5), $want, 'HTTP/1.0 stream: exact body bytes of two events, no chunk framing');

    my $d = $t->request('DELETE', '/pub?topic=p10');
    is($d->{status}, 200, 'DELETE closes the channel');
    is($d->{body}, qq({"channel":"p10","closed_subscribers":1}\n), 'DELETE answer');
    ok($s->wait_eof(5), 'HTTP/1.0 stream: the server closes the connection to end the body');
    my ($head, $body) = split /\r\n\r\n/, $s->raw, 2;
    is($body, $want, 'HTTP/1.0 stream: everything after the head is exactly the events (close-delimited)');
    $s->close;
}

# --- HTTP/2 (h2c with prior knowledge) through curl.
SKIP: {
    my $curl_v = `curl -V 2>&1`;
    skip 'curl without HTTP/2', 9 unless $curl_v =~ /HTTP2/;
    my $dir = $t->dir;
    my $url = 'http://127.0.0.1:' . $t->port(1) . '/events?topics=h2';
    my $cmd = "curl -sN --http2-prior-knowledge --max-time 15 -D $dir/h2.head -o $dir/h2.body "
            . "-w '%{http_version}' '$url' > $dir/h2.version 2>$dir/h2.err; echo \$? > $dir/h2.rc";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        { exec '/bin/sh', '-c', $cmd }
        POSIX::_exit(127);
    }
    my $st = stats_until({subscribers => 1}, 5);
    is($st->{subscribers}, 1, 'HTTP/2 stream counted as one subscriber');
    my @r = map { $t->publish('/pub?topic=h2', "h2 event $_") } 1 .. 3;
    is($r[0]{subscribers}, 1, 'publish reaches the HTTP/2 stream');
    my $want = ":ok\n\n" . join('', map { "id: $r[$_]{id}\ndata: h2 event " . ($_ + 1) . "\n\n" } 0 .. 2);
    SSETest::wait_until(sub { (slurp("$dir/h2.body") // '') eq $want }, 5);
    is(slurp("$dir/h2.body"), $want, 'HTTP/2 stream: exact body bytes while streaming');

    my $d = $t->request('DELETE', '/pub?topic=h2');
    is($d->{body}, qq({"channel":"h2","closed_subscribers":1}\n), 'DELETE ends the HTTP/2 stream');
    my $done = SSETest::wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, 10);
    ok($done, 'curl finished once the stream ended');
    kill 'TERM', $pid unless $done;
    is(slurp("$dir/h2.rc"), "0\n", 'curl exit code 0 (the HTTP/2 stream ended cleanly, not by --max-time)')
        or diag(slurp("$dir/h2.err"));
    is(slurp("$dir/h2.version"), '2', 'the response was HTTP/2');
    my $head = slurp("$dir/h2.head") // '';
    like($head, qr{^HTTP/2 200}, 'HTTP/2 status 200');
    my %h = map { /^([^:]+):\s*(.*?)\r?$/ ? (lc $1 => $2) : () } split /\n/, $head;
    is_deeply([@h{qw(content-type cache-control x-accel-buffering x-test)}],
              ['text/event-stream', 'no-cache', 'no', 'yes'], 'HTTP/2 stream headers');
    is(slurp("$dir/h2.body"), $want, 'HTTP/2 stream: body is exactly the three events');
}

# --- add_header on an HTTP/1.1 stream.
{
    my $s = $t->subscribe('/events?topics=hdr');
    is($s->status, 200, 'HTTP/1.1 stream: 200');
    is($s->header('X-Test'), 'yes', 'add_header X-Test yes always: present on the stream');
    $s->close;
}

# --- HEAD on a stream: headers only, not a subscriber.
{
    my $sub = $t->subscribe('/events?topics=hd');
    stats_until({subscribers => 1});
    my $t0 = time;
    my $h = $t->request('HEAD', '/events?topics=hd');
    my $took = time - $t0;
    is($h->{status}, 200, 'HEAD on a stream: 200');
    is($h->{headers}{'content-type'}, 'text/event-stream', 'HEAD: Content-Type');
    is($h->{headers}{'cache-control'}, 'no-cache', 'HEAD: Cache-Control');
    is($h->{headers}{'x-accel-buffering'}, 'no', 'HEAD: X-Accel-Buffering');
    ok(!defined $h->{headers}{'content-length'}, 'HEAD: no Content-Length');
    is($h->{body}, '', 'HEAD: no body');
    my (undef, $raw_body) = split /\r\n\r\n/, $h->{raw}, 2;
    is($raw_body, '', 'HEAD: not one byte after the head');
    cmp_ok($took, '<', 2, 'HEAD is answered at once, the connection is not held');

    # A HEAD kept alive: the connection stays usable, and no subscriber is added meanwhile.
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp') or die $!;
    print $c "HEAD /events?topics=hd HTTP/1.1\r\nHost: localhost\r\n\r\n";
    my $buf = '';
    my $sel = IO::Select->new($c);
    my $end = time + 3;
    while ($buf !~ /\r\n\r\n/ && time < $end) {
        next unless $sel->can_read(0.2);
        my $n = sysread($c, $buf, 4096, length $buf);
        last unless $n;
    }
    like($buf, qr{^HTTP/1\.1 200}, 'keep-alive HEAD: 200');
    my $st = stats();
    is($st->{subscribers}, 1, 'while a kept-alive HEAD connection is open: /stats subscribers == 1 (the GET only)');
    my $r = $t->publish('/pub?topic=hd', 'after head');
    is($r->{subscribers}, 1, 'publish after HEAD reaches exactly 1 subscriber');
    $sub->events(1);
    is($sub->body, ":ok\n\nid: $r->{id}\ndata: after head\n\n", 'the GET stream got the event');
    sleep 0.2;
    my $extra = '';
    sysread($c, $extra, 4096) if $sel->can_read(0.2);
    my (undef, $after_head) = split /\r\n\r\n/, $buf, 2;
    is(($after_head // '') . $extra, '', 'keep-alive HEAD: no body bytes even after a publish');
    print $c "GET /pub?topic=hd HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    my $resp = '';
    $end = time + 3;
    while (time < $end) {
        next unless $sel->can_read(0.2);
        my $n = sysread($c, $resp, 4096, length $resp);
        last unless $n;
    }
    like($resp, qr{^HTTP/1\.1 200.*"subscribers":1}s, 'the HEAD connection served a second request (keep-alive)');
    close $c;
    $sub->close;
    $st = stats_until({subscribers => 0, channels => 0});
    is($st->{subscribers}, 0, 'after closing: 0 subscribers');

    # HEAD alone creates no channel.
    $h = $t->request('HEAD', '/events?topics=headonly');
    is($h->{status}, 200, 'HEAD on a fresh channel: 200');
    my $g = $t->request('GET', '/pub?topic=headonly');
    is($g->{status}, 404, 'HEAD did not create the channel (GET on the publish location: 404)');
    is(stats()->{subscribers}, 0, 'HEAD did not leave a subscriber');
}

$t->finish;
done_testing;
