# The direct path (sse_direct_write, on by default): a chunked HTTP/1.1 stream, plain or TLS, is
# written each event's frame as its own chunk, stored framed in the zone, past nginx's body
# filters. Checked on the wire, byte for byte: the first bytes (through nginx's filters, as one
# chunk), every event after as one chunk (a batch of three is three chunks; through the filters
# it would be one), heartbeats framed the same way, a resume, a slow reader that takes the bytes
# late (every byte in order, with more published while the socket is full, and the last chunk
# after all of them when the stream ends with bytes pending), $bytes_sent equal to what the
# client received, and limit_rate pacing it. gzip, HTTP/2 and sse_direct_write off keep nginx's filters, with the same
# event bytes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use IO::Socket::SSL;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
use Compress::Raw::Zlib;
use SSETest;
use SSEExpect qw(frame);

# Ports: 0 plain HTTP/1.1, 1 TLS (HTTP/1.1), 2 plain with a small socket send buffer, 3 HTTP/2.
# sub_filter only where nginx has it (Debian's does; the one scripts/build-nginx.sh builds does not).
my $have_sub = SSETest::nginx_info()->{modules}{http_sub};
my $sub_location = !$have_sub ? '' : <<'CONF';
        location = /sub {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sub_filter 'data: ' 'data: [sub] ';
            sub_filter_types text/event-stream;
            sub_filter_once off;
        }
CONF
my $locations = $sub_location . <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_retry 2s;
            sse_send_buffer 16m;
            access_log %%DIR%%/logs/bytes.log bytes;
        }
        location = /hb {
            sse_subscribe $arg_topics;
            sse_heartbeat 1s;
        }
        location = /limited {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            limit_rate 8k;
        }
        location = /off {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_direct_write off;
        }
        location = /gz {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            gzip on;
            gzip_types text/event-stream;
            gzip_min_length 0;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /clients {
            sse_clients;
        }
        location = /stats {
            sse_stats;
        }
CONF
my $t = SSETest->new(extra_ports => 3, server => $locations, http => <<"CONF");
    client_max_body_size 8m;
    log_format bytes '\$uri \$arg_topics \$bytes_sent';
    server {
        listen 127.0.0.1:%%PORT1%% ssl;
        ssl_certificate %%DIR%%/cert.pem;
        ssl_certificate_key %%DIR%%/key.pem;
$locations
    }
    server {
        listen 127.0.0.1:%%PORT2%% sndbuf=8k;
$locations
    }
    server {
        listen 127.0.0.1:%%PORT3%% http2;
$locations
    }
CONF
my $dir = $t->dir;
system("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout $dir/key.pem"
       . " -out $dir/cert.pem 2>/dev/null") == 0 or die "openssl failed";
chmod 0644, "$dir/key.pem", "$dir/cert.pem";
$t->start;

END { local $?; $t->stop if $t }

sub chunk { my ($bytes) = @_; return sprintf('%x', length $bytes) . "\r\n$bytes\r\n" }

# A raw stream: the request written, every byte read kept as it came (head and body).
sub open_raw {
    my ($path, %o) = @_;
    my $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    $sock->setsockopt(SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) or die "setsockopt: $!" if $o{rcvbuf};
    $sock->connect(pack_sockaddr_in($o{port} // $t->port, inet_aton('127.0.0.1'))) or die "connect: $!";
    if ($o{tls}) {
        IO::Socket::SSL->start_SSL($sock, SSL_verify_mode => SSL_VERIFY_NONE) or die "TLS: $SSL_ERROR";
    }
    my $hdrs = join '', map { "$_: $o{headers}{$_}\r\n" } sort keys %{ $o{headers} || {} };
    my $req = "GET $path HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n$hdrs\r\n";
    print $sock $req or die "write: $!";
    return {sock => $sock, raw => '', eof => 0};
}

# Reads until $cond->(raw) holds, the connection ends or $timeout passes; returns the raw bytes.
sub read_until {
    my ($s, $cond, $timeout) = @_;
    my $end = time + $timeout;
    my $sel = IO::Select->new($s->{sock});
    while (!$cond->($s->{raw}) && !$s->{eof} && time < $end) {
        my $pending = $s->{sock}->can('pending') && $s->{sock}->pending;
        next unless $pending || $sel->can_read(0.1);
        my $n = sysread($s->{sock}, my $buf, 65536);
        if (!$n) {
            $s->{eof} = 1;
            last;
        }
        $s->{raw} .= $buf;
    }
    return $s->{raw};
}

sub body_of { my ($raw) = @_; my (undef, $body) = split /\r\n\r\n/, $raw, 2; return $body // '' }
sub head_of { my ($raw) = @_; my ($head) = split /\r\n\r\n/, $raw, 2; return $head // '' }

# Reads until the body is exactly $want (or $timeout); returns the body.
sub body_until {
    my ($s, $want, $timeout) = @_;
    read_until($s, sub { length(body_of($_[0])) >= length $want }, $timeout);
    return body_of($s->{raw});
}

# The chunks of a chunked body: (data of each chunk, what is left unparsed).
sub chunks_of {
    my ($body) = @_;
    my @chunks;
    while ($body =~ s/^([0-9a-f]+)\r\n//) {
        my $n = hex $1;
        last if length($body) < $n + 2;
        push @chunks, substr($body, 0, $n, '');
        $body =~ s/^\r\n// or last;
    }
    return (\@chunks, $body);
}

# A batch of $n events: [body to publish, exact frames of its events once published].
sub publish_batch {
    my ($topic, @data) = @_;
    my $batch = join '', map { "data: $_\n\n" } @data;
    my $r = $t->request('POST', "/pub?topic=$topic", body => $batch,
                        headers => {'Content-Type' => 'text/event-stream'});
    die "batch: $r->{status}" unless $r->{status} == 202;
    my ($last) = $r->{body} =~ /"id":"(\d+)"/;
    my $id = $last - @data + 1;
    return map { frame($id++, $_) } @data;
}

my $preamble = ":ok\nretry: 2000\n\n";

# Publishes two events one by one and a batch of three on $topic, reading each; returns the frames.
sub publish_five {
    my ($s, $topic, $want_so_far) = @_;
    my @frames;
    for my $text ('one', "two\nlines") {
        my $e = $t->publish_event("/pub?topic=$topic", $text);
        push @frames, $e->[1];
        read_until($s, sub { index($_[0], $e->[1]) >= 0 }, 5);
    }
    push @frames, publish_batch($topic, 'three', 'four', 'five');
    return @frames;
}

# --- Plain HTTP/1.1 and TLS: every event its own chunk, the stream's end after all of them.
for my $case (['plain', 0, {}], ['TLS', 1, {tls => 1}]) {
    my ($name, $port, $o) = @$case;
    my $topic = "d$port";
    my $s = open_raw("/events?topics=$topic", port => $t->port($port), %$o);
    is(body_until($s, chunk($preamble), 5), chunk($preamble), "$name: the preamble, as one chunk");
    like(head_of($s->{raw}), qr{^HTTP/1\.1 200 .*\r\nTransfer-Encoding: chunked\r\n}s, "$name: 200, chunked");
    my @frames = publish_five($s, $topic);
    my $want = chunk($preamble) . join '', map { chunk($_) } @frames;
    is(body_until($s, $want, 5), $want, "$name: each event its own chunk, a batch of three three chunks");

    # The channel closes: the last chunk follows the events, and the connection ends.
    $t->request('DELETE', "/pub?topic=$topic");
    read_until($s, sub { 0 }, 5);
    ok($s->{eof}, "$name: the stream ends");
    is(body_of($s->{raw}), $want . "0\r\n\r\n", "$name: the last chunk after every event, nothing else");
    my $raw = $s->{raw};
    ok(SSETest::wait_until(sub { (`cat $dir/logs/bytes.log 2>/dev/null` // '') =~ m{^/events \Q$topic\E (\d+)$}m }, 5),
       "$name: the stream is logged");
    my ($logged) = `cat $dir/logs/bytes.log` =~ m{^/events \Q$topic\E (\d+)$}m;
    is($logged, length $raw, "$name: \$bytes_sent is what the client received");
}

# --- sse_clients counts the events and their SSE bytes, not the chunk framing.
{
    my $s = open_raw('/events?topics=counted');
    body_until($s, chunk($preamble), 5);
    my @frames = publish_batch('counted', 'a', 'bb');
    my $bytes = length join '', @frames;
    my $client;
    SSETest::wait_until(sub {
        ($client) = grep { "@{ $_->{channels} }" eq 'counted' } @{ $t->get_json('/clients')->{clients} };
        $client && $client->{events_sent} == 2 && $client->{bytes_sent} == $bytes;
    }, 1.5);
    is($client->{events_sent}, 2, 'sse_clients: events_sent within 1.5 s');
    is($client->{bytes_sent}, $bytes, 'sse_clients: bytes_sent, the frames without their chunk framing');
    close $s->{sock};
}

# --- Heartbeats are chunks too, in order with the events.
{
    my $s = open_raw('/hb?topics=hb');
    my $want = chunk(":ok\n\n") . chunk(": heartbeat\n\n");
    is(body_until($s, $want, 3), $want, 'a heartbeat is its own chunk');
    my $e = $t->publish_event('/pub?topic=hb', 'after the heartbeat');
    read_until($s, sub { index($_[0], $e->[1]) >= 0 }, 5);
    like(body_of($s->{raw}), qr/^\Q$want\E(?:\Q${\ chunk(": heartbeat\n\n")}\E)*\Q${\ chunk($e->[1])}\E$/,
         'then the event, its own chunk');
    close $s->{sock};
}

# --- A resume: the first bytes (preamble and replay) go through nginx's filters as one chunk,
# the events after as chunks of their own.
{
    my $e1 = $t->publish_event('/pub?topic=res', 'kept 1');
    my $e2 = $t->publish_event('/pub?topic=res', 'kept 2');
    my $s = open_raw('/events?topics=res', headers => {'Last-Event-ID' => $e1->[0]});
    my $want = chunk($preamble . $e2->[1]);
    is(body_until($s, $want, 5), $want, 'resume: the preamble and the replay, one chunk');
    my $e3 = $t->publish_event('/pub?topic=res', 'live 3');
    $want .= chunk($e3->[1]);
    is(body_until($s, $want, 5), $want, 'resume: then the live event, its own chunk');
    close $s->{sock};
}

# --- A slow reader (4 KB receive buffer, 8 KB send buffer): 150 KB published while it does not
# read, one more event while the socket is full, then the stream ends with bytes pending. Read
# late, it gets every byte in order and the last chunk after them.
{
    my $s = open_raw('/events?topics=slow', port => $t->port(2), rcvbuf => 4096);
    is(body_until($s, chunk($preamble), 5), chunk($preamble), 'slow reader: the preamble');
    my @payloads = map { "burst $_ " . ('x' x 1490) } 1 .. 100;
    my @frames = publish_batch('slow', @payloads);
    sleep 0.3;    # the socket fills
    my $e = $t->publish_event('/pub?topic=slow', 'while full');
    push @frames, $e->[1];
    sleep 0.3;
    $t->request('DELETE', '/pub?topic=slow');
    my $want = chunk($preamble) . join('', map { chunk($_) } @frames) . "0\r\n\r\n";
    read_until($s, sub { 0 }, 10);
    ok($s->{eof}, 'slow reader: the stream ends once everything is written');
    my $body = body_of($s->{raw});
    is(length $body, length $want, 'slow reader: every byte arrives');
    ok($body eq $want, 'slow reader: byte for byte, in order, the last chunk last');
    my ($logged) = `cat $dir/logs/bytes.log` =~ m{^/events slow (\d+)$}m;
    is($logged, length $s->{raw}, 'slow reader: $bytes_sent is what the client received');
}

# --- limit_rate still applies (the write filter paces the direct path): 24 KB at 8 KB/s take
# more than a second and arrive whole, in order.
{
    my $s = open_raw('/limited?topics=limited');
    is(body_until($s, chunk(":ok\n\n"), 5), chunk(":ok\n\n"), 'limit_rate: the preamble');
    my $t0 = time;
    my @frames = publish_batch('limited', map { "paced $_ " . ('y' x 6000) } 1 .. 4);
    my $want = chunk(":ok\n\n") . join '', map { chunk($_) } @frames;
    is(body_until($s, $want, 10), $want, 'limit_rate: every byte, in order');
    my $took = time - $t0;
    cmp_ok($took, '>', 1, 'limit_rate: paced');
    diag(sprintf 'limit_rate: 24 KB in %.2f s', $took);
    close $s->{sock};
}

# --- sse_direct_write off: nginx's chunked filter frames what one delivery round gives it, so a
# batch is one chunk; the event bytes are the same.
{
    my $s = open_raw('/off?topics=off');
    is(body_until($s, chunk(":ok\n\n"), 5), chunk(":ok\n\n"), 'off: the preamble');
    my @frames = publish_five($s, 'off');
    my $want = chunk(":ok\n\n") . chunk($frames[0]) . chunk($frames[1]) . chunk(join '', @frames[2 .. 4]);
    is(body_until($s, $want, 5), $want, 'off: through the filters, a batch of three is one chunk');
    close $s->{sock};
}

# --- gzip keeps the filters: the chunks decompress to exactly the frames.
{
    my $s = open_raw('/gz?topics=gz', headers => {'Accept-Encoding' => 'gzip'});
    read_until($s, sub { $_[0] =~ /\r\n\r\n/ }, 5);
    like(head_of($s->{raw}), qr/\r\nContent-Encoding: gzip(?:\r\n|$)/i, 'gzip: Content-Encoding gzip');
    my ($inf) = Compress::Raw::Zlib::Inflate->new(-WindowBits => WANT_GZIP, -AppendOutput => 1);
    my @frames = publish_batch('gz', 'g1', 'g2');
    my $want = ":ok\n\n" . join '', @frames;
    my $out = '';
    read_until($s, sub {
        my ($chunks) = chunks_of(body_of($_[0]));
        my $in = join '', @$chunks;
        $out = '';
        $inf = Compress::Raw::Zlib::Inflate->new(-WindowBits => WANT_GZIP, -AppendOutput => 1);
        $inf->inflate($in, $out);
        $out eq $want;
    }, 5);
    is($out, $want, 'gzip: the same event bytes');
    close $s->{sock};
}

# --- A body filter of nginx that is active on the request (sub_filter here) is seen: the stream
# keeps the filters, and the filter rewrites every event.
SKIP: {
    skip 'nginx without the sub module', 2 unless $have_sub;
    my $s = open_raw('/sub?topics=sub');
    is(body_until($s, chunk(":ok\n\n"), 5), chunk(":ok\n\n"), 'sub_filter: the preamble');
    my @frames = publish_batch('sub', 's1', 's2');
    my $want = ":ok\n\n" . join '', map { s/^data: /data: [sub] /mgr } @frames;
    read_until($s, sub { my ($chunks) = chunks_of(body_of($_[0])); length(join '', @$chunks) >= length $want }, 5);
    my ($chunks) = chunks_of(body_of($s->{raw}));
    is(join('', @$chunks), $want, 'sub_filter: every event rewritten by the filter');
    close $s->{sock};
}

# --- HTTP/2 keeps the filters: the same event bytes.
SKIP: {
    skip 'curl without HTTP/2', 1 unless `curl --version 2>/dev/null` =~ /HTTP2/;
    my $out = "$dir/h2.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        exec 'curl', '-sN', '--http2-prior-knowledge', '--max-time', '8', '-o', $out,
            'http://127.0.0.1:' . $t->port(3) . '/events?topics=h2';
    }
    SSETest::wait_until(sub { ($t->channel_state('/pub?topic=h2')->{subscribers} // 0) == 1 }, 5);
    my @frames = publish_batch('h2', 'h1', 'h2');
    my $want = $preamble . join '', @frames;
    SSETest::wait_until(sub { -s $out && -s $out >= length $want }, 5);
    kill 'TERM', $pid;
    waitpid $pid, 0;
    is(`cat $out`, $want, 'HTTP/2: the same event bytes');
}

$t->finish;
done_testing;
