# gzip on a stream: Content-Encoding gzip, and every event is flushed through the compressor at
# once: the bytes received so far decompress to exactly the frames published so far.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use Compress::Raw::Zlib;
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        gzip on;
        gzip_types text/event-stream;
        gzip_min_length 0;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

# Incremental gunzip of an SSEClient's (de-chunked) body.
sub new_gunzip {
    my ($s) = @_;
    my ($inf, $status) = Compress::Raw::Zlib::Inflate->new(-WindowBits => WANT_GZIP, -AppendOutput => 1,
                                                            -ConsumeInput => 1);
    die "inflateInit: $status" unless $inf;
    return {s => $s, inf => $inf, fed => 0, in => '', out => '', error => ''};
}

sub gunzip_more {
    my ($g) = @_;
    my $body = $g->{s}->body;
    $g->{in} .= substr($body, $g->{fed});
    $g->{fed} = length $body;
    return $g->{out} unless length $g->{in};
    my $status = $g->{inf}->inflate($g->{in}, $g->{out});
    $g->{stream_end} = 1 if $status == Z_STREAM_END;
    $g->{error} = "$status" unless $status == Z_OK || $status == Z_BUF_ERROR || $status == Z_STREAM_END;
    return $g->{out};
}

# Reads until the decompressed text equals $want or $timeout passes; returns the decompressed text.
sub gunzip_until {
    my ($g, $want, $timeout) = @_;
    my $end = time + $timeout;
    while (1) {
        my $out = gunzip_more($g);
        return $out if $out eq $want || $g->{error};
        last if time >= $end || $g->{s}->eof;
        $g->{s}->drain(0.02);
    }
    return gunzip_more($g);
}

my $s = $t->subscribe('/events?topics=gz', headers => {'Accept-Encoding' => 'gzip'});
is($s->status, 200, 'gzip stream: 200');
is($s->header('Content-Encoding'), 'gzip', 'gzip stream: Content-Encoding: gzip');
is($s->header('Content-Type'), 'text/event-stream', 'gzip stream: Content-Type');
is($s->header('Transfer-Encoding'), 'chunked', 'gzip stream: chunked');
ok(!defined $s->header('Content-Length'), 'gzip stream: no Content-Length');

my $plain = $t->subscribe('/events?topics=gz');
ok(!defined $plain->header('Content-Encoding'), 'a stream without Accept-Encoding is not compressed');
is($plain->wait_body(5), ":ok\n\n", 'uncompressed stream opens with :ok');

my $g = new_gunzip($s);
is(gunzip_until($g, ":ok\n\n", 1), ":ok\n\n", 'the opening :ok is flushed through gzip at once');

my $r1 = $t->publish('/pub?topic=gz&event=first', '{"n":1,"text":"' . ('abc' x 50) . '"}');
my $want1 = ":ok\n\nid: $r1->{id}\nevent: first\ndata: {\"n\":1,\"text\":\"" . ('abc' x 50) . "\"}\n\n";
my $t0 = time;
is(gunzip_until($g, $want1, 1), $want1, 'after event 1: the bytes received within 1 s decompress to exactly :ok + event 1');
diag(sprintf 'event 1 decompressed after %.3f s', time - $t0);

my $r2 = $t->publish('/pub?topic=gz', "second\nevent");
my $want2 = $want1 . "id: $r2->{id}\ndata: second\ndata: event\n\n";
is(gunzip_until($g, $want2, 1), $want2, 'after event 2: the bytes received within 1 s decompress to exactly :ok + events 1, 2');

my $r3 = $t->publish('/pub?topic=gz', 'x');
my $want3 = $want2 . "id: $r3->{id}\ndata: x\n\n";
is(gunzip_until($g, $want3, 1), $want3, 'after a 1-byte event 3: flushed within 1 s too');
is($g->{error}, '', 'no inflate error');

my $plain_want = $want3;
$plain_want =~ s/^:ok\n\n//;
$plain->events(3);
is($plain->body, ":ok\n\n$plain_want", 'the uncompressed stream got the same bytes');

# Closing the channel ends the gzip stream with a complete gzip member and the zero chunk.
my $d = $t->request('DELETE', '/pub?topic=gz');
is($d->{status}, 200, 'DELETE closes the channel');
# (the connection may stay open for keep-alive: wait for the terminating chunk, not for EOF)
SSETest::wait_until(sub { $s->drain(0.02); $s->{last_chunk} || $s->eof }, 5);
ok($s->{last_chunk}, 'gzip stream ended with the zero-length chunk');
gunzip_more($g);
is($g->{out}, $want3, 'the whole gzip body decompresses to exactly the stream');
is($g->{error}, '', 'no inflate error at the end');
ok($g->{stream_end}, 'the gzip member is complete (trailer received)');

my $st = $t->get_json('/stats');
is($st->{subscribers}, 0, 'no subscriber left');

$t->finish;
done_testing;
