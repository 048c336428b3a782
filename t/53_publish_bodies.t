# Every body shape nginx can hand the module publishes exactly the bytes sent: chunked (one,
# many small, sizes with leading zeros and extensions, trailers, large), bodies read in several
# pieces, bodies larger than client_body_buffer_size (in a temp file), client_body_in_file_only
# on and clean, HTTP/2 DATA frames (one and several), and empty bodies (data ""). Each is checked
# as the exact frame a subscriber receives; the ASan pass (scripts/test.sh) checks that no
# shape makes the module read a null or stale buffer.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use JSON::PP;
use SSETest;
use SSEExpect qw(frame);

my $locations = <<'CONF';
        client_max_body_size 4m;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 8m;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /pub-small {
            client_body_buffer_size 1k;
            sse_publish $arg_topic;
        }
        location = /pub-file {
            client_body_in_file_only on;
            sse_publish $arg_topic;
        }
        location = /pub-clean {
            client_body_in_file_only clean;
            sse_publish $arg_topic;
        }
CONF
my $t = SSETest->new(extra_ports => 1, server => $locations, http => <<"HTTP");
    sse_shm_size 32m;
    server {
        listen 127.0.0.1:%%PORT1%% http2;
$locations
    }
HTTP
END { local $?; $t->stop if $t }
chmod 0711, $t->dir or die "chmod: $!";
$t->start;

my $PRE = ":ok\n\n";
my $s = $t->subscribe('/events?topics=b');
is($s->wait_body(length $PRE, 5), $PRE, 'the subscriber stream opens');
my $want = $PRE;

# A raw HTTP/1.1 POST: the head, then the body in @pieces, with a pause between writes.
sub raw_post {
    my ($path, $head_lines, @pieces) = @_;
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp') or die "connect: $!";
    $c->autoflush(1);
    syswrite($c, "POST $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n$head_lines\r\n");
    for my $p (@pieces) {
        sleep 0.05;
        my $off = 0;
        while ($off < length $p) {
            my $n = syswrite($c, $p, length($p) - $off, $off);
            die "write: $!" unless defined $n;
            $off += $n;
        }
    }
    my $resp = '';
    my $sel = IO::Select->new($c);
    my $end = time + 10;
    while (time < $end) {
        last unless $sel->can_read($end - time);
        my $n = sysread($c, $resp, 65536, length $resp);
        last unless $n;
    }
    close $c;
    return SSETest::parse_response($resp);
}

sub chunked {
    my (@chunks) = @_;
    return join('', map { sprintf("%x\r\n", length $_) . "$_\r\n" } @chunks) . "0\r\n\r\n";
}

# Checks the reply and that the stream got exactly the frame of $data, as the next event.
sub delivered {
    my ($label, $r, $data) = @_;
    is($r->{status}, 202, "$label: 202") or diag(substr($r->{body} // '', 0, 200));
    my $j = eval { decode_json($r->{body}) } // {};
    my $id = $j->{id} // 'none';
    $want .= length $data ? frame($id, $data) : "id: $id\ndata:\n\n";    # an empty body is one empty data line
    my $got = $s->wait_body(length $want, 10);
    ok($got eq $want, "$label: the subscriber got exactly the " . length($data) . ' bytes sent')
        or diag(sprintf('stream has %d bytes, want %d; the last event: %s', length $got, length $want,
                        substr($got, length($want) - length(frame($id, $data)) - 6, 120)));
    $want = $got if $got ne $want;    # go on from what arrived
    if ($s->eof) {
        # Its worker died (a crash shows in error.log): go on with a new stream, so that each case
        # below is judged on its own.
        diag("$label: the subscriber's stream ended; opening another");
        $s->close;
        $s = $t->subscribe('/events?topics=b');
        $want = $PRE;
        $s->wait_body(length $PRE, 5);
    }
}

my $big = join '', map { sprintf('%06d:', $_) . ('abcdefghij' x 9) . "\n" } 1 .. 3000;    # ~300 KB, LF-separated
chop $big;

# --- chunked ----------------------------------------------------------------------------------
delivered('chunked 3+3', raw_post('/pub?topic=b', "Transfer-Encoding: chunked\r\n", "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"),
          'abcdef');
delivered('chunked, sizes with leading zeros, an extension, a trailer',
          raw_post('/pub?topic=b', "Transfer-Encoding: chunked\r\n", "003\r\nabc\r\n1;ext=1\r\nd\r\n0002\r\nef\r\n0\r\nX-Trailer: t\r\n\r\n"),
          'abcdef');
{
    my @small = map { substr('0123456789', $_ % 10, 1 + $_ % 3) } 0 .. 199;
    delivered('chunked, 200 chunks of 1-3 bytes, each written apart',
              raw_post('/pub?topic=b', "Transfer-Encoding: chunked\r\n", map({ sprintf("%x\r\n%s\r\n", length $_, $_) } @small[0 .. 19]),
                       substr(chunked(@small[20 .. 199]), 0, -5), "0\r\n\r\n"),
              join('', @small));
}
delivered('chunked, one byte', raw_post('/pub?topic=b', "Transfer-Encoding: chunked\r\n", "1\r\nx\r\n0\r\n\r\n"), 'x');
delivered('chunked, empty body (data "")', raw_post('/pub?topic=b', "Transfer-Encoding: chunked\r\n", "0\r\n\r\n"), '');
{
    my @chunks = unpack '(a4096)*', $big;
    my $body = chunked(@chunks);
    delivered('chunked, ~300 KB in 4 KB chunks, client_body_buffer_size 1k (a temp file)',
              raw_post('/pub-small?topic=b', "Transfer-Encoding: chunked\r\n", unpack('(a65536)*', $body)), $big);
    delivered('chunked, ~300 KB, default buffers', raw_post('/pub?topic=b', "Transfer-Encoding: chunked\r\n", unpack('(a50000)*', $body)),
              $big);
    delivered('chunked into client_body_in_file_only on',
              raw_post('/pub-file?topic=b', "Transfer-Encoding: chunked\r\n", chunked('abc', 'def', 'g')), 'abcdefg');
}

# --- Content-Length: in pieces, in memory, in files ----------------------------------------------
my $mid = substr($big, 0, 6000);
delivered('Content-Length, the body in three writes', raw_post('/pub?topic=b', "Content-Length: 6000\r\n",
          substr($mid, 0, 10), substr($mid, 10, 2000), substr($mid, 2010)), $mid);
delivered('Content-Length, 300 KB over client_body_buffer_size 1k (a temp file)',
          raw_post('/pub-small?topic=b', 'Content-Length: ' . length($big) . "\r\n", unpack('(a30000)*', $big)), $big);
{
    my $three = substr($big, 0, 3000);
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp') or die;
    syswrite($c, "POST /pub-small?topic=b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n"
                 . substr($three, 0, 500));
    sleep 0.05;
    syswrite($c, substr($three, 500));
    my $resp = '';
    my $sel = IO::Select->new($c);
    while ($sel->can_read(5)) { my $n = sysread($c, $resp, 65536, length $resp); last unless $n }
    close $c;
    delivered('Content-Length 3000, client_body_buffer_size 1k, part of the body read with the head',
              SSETest::parse_response($resp), $three);
}
delivered('client_body_in_file_only on', $t->request('POST', '/pub-file?topic=b', body => 'in a file'), 'in a file');
delivered('client_body_in_file_only on, 300 KB', $t->request('POST', '/pub-file?topic=b', body => $big), $big);
delivered('client_body_in_file_only clean', $t->request('POST', '/pub-clean?topic=b', body => 'in a clean file'),
          'in a clean file');
delivered('client_body_in_file_only clean, 300 KB', $t->request('POST', '/pub-clean?topic=b', body => $big), $big);
delivered('empty body, Content-Length: 0', $t->request('POST', '/pub?topic=b', body => ''), '');
delivered('empty body into client_body_in_file_only on', $t->request('POST', '/pub-file?topic=b', body => ''), '');
delivered('empty body into client_body_in_file_only clean', $t->request('POST', '/pub-clean?topic=b', body => ''), '');

# --- HTTP/2 DATA frames, through curl ---------------------------------------------------------------
SKIP: {
    my $curl_v = `curl -V 2>&1`;
    skip 'curl without HTTP/2', 1 unless $curl_v =~ /HTTP2/;
    my $dir = $t->dir;
    my $n = 0;
    my $h2 = sub {
        my ($label, $loc, $data) = @_;
        $n++;
        open my $fh, '>', "$dir/h2body$n" or die $!;
        binmode $fh;
        print $fh $data;
        close $fh;
        my $url = 'http://127.0.0.1:' . $t->port(1) . "$loc?topic=b";
        my $out = `curl -s --http2-prior-knowledge --max-time 10 -H 'Content-Type: application/octet-stream' --data-binary \@$dir/h2body$n -w '\\n%{http_code} %{http_version}' '$url' 2>&1`;
        my ($body, $code, $ver) = $out =~ /\A(.*)\n(\d+) (\S+)\z/s;
        is($ver, '2', "$label: over HTTP/2");
        delivered($label, {status => $code // 0, body => $body // ''}, $data);
    };
    $h2->('HTTP/2, a small body', '/pub', 'over h2');
    $h2->('HTTP/2, 300 KB in many DATA frames', '/pub', $big);
    $h2->('HTTP/2, 300 KB, client_body_buffer_size 1k', '/pub-small', $big);
    $h2->('HTTP/2, client_body_in_file_only on', '/pub-file', substr($big, 0, 40000));
    $h2->('HTTP/2, client_body_in_file_only clean', '/pub-clean', 'h2 clean');
    $h2->('HTTP/2, an empty body', '/pub', '');
}

$s->close;
$t->finish;
done_testing;
