# Shapes of event data: line ends (LF, CRLF, CR, mixed), empty lines and empty data, a 1 MB
# payload delivered byte-exact, and PUT publishing like POST.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(http => <<'HTTP', server => <<'CONF');
    sse_shm_size 16m;
HTTP
        client_max_body_size 2m;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 4m;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
CONF

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

# Bodies over client_body_buffer_size go to client_body_temp_path inside the test directory;
# workers run as nobody and the directory is created 0700: let them in.
chmod 0711, $t->dir or die "chmod: $!";
$t->start;

my $PRE = ":ok\n\n";

my $s = $t->subscribe('/events?topics=shapes');
is($s->status, 200, 'stream opens');
is($s->wait_body(length $PRE), $PRE, 'preamble');

# Publishes $data and returns the frame the stream got for it, checking it is the next event.
my $expected_body = $PRE;
my $seen = 0;
sub publish_and_frame {
    my ($data, $name, %o) = @_;
    my $r = $t->publish('/pub?topic=shapes', $data, %o);
    my @ev = $s->events($seen + 1, 10);
    is(scalar @ev, $seen + 1, "$name: one more event arrived");
    my $ev = $ev[$seen] // {};
    $seen = @ev;
    is($ev->{id}, $r->{id}, "$name: the event carries the id the publish reported");
    return ($r, $ev);
}

my @cases = (
    ['single line',        "hello world",               "data: hello world\n"],
    ['LF lines',           "one\ntwo\nthree",           "data: one\ndata: two\ndata: three\n"],
    ['CRLF lines',         "one\r\ntwo\r\nthree",       "data: one\ndata: two\ndata: three\n"],
    ['CR lines',           "one\rtwo\rthree",           "data: one\ndata: two\ndata: three\n"],
    ['mixed line ends',    "a\r\nb\nc\rd",              "data: a\ndata: b\ndata: c\ndata: d\n"],
    ['empty line inside (LF)',   "a\n\nb",              "data: a\ndata:\ndata: b\n"],
    ['empty line inside (CRLF)', "a\r\n\r\nb",          "data: a\ndata:\ndata: b\n"],
    ['empty line inside (CR)',   "a\r\rb",              "data: a\ndata:\ndata: b\n"],
    ['LF CR is two line ends',   "a\n\rb",              "data: a\ndata:\ndata: b\n"],
    ['trailing LF',        "a\n",                       "data: a\ndata:\n"],
    ['trailing CRLF',      "a\r\n",                     "data: a\ndata:\n"],
    ['leading LF',         "\na",                       "data:\ndata: a\n"],
    ['only a LF',          "\n",                        "data:\ndata:\n"],
    ['only a CRLF',        "\r\n",                      "data:\ndata:\n"],
    ['spaces kept',        "  two leading, trailing  ", "data:   two leading, trailing  \n"],
    ['colon and field-like text kept', "id: 5\nevent: x", "data: id: 5\ndata: event: x\n"],
    ['UTF-8 multibyte',    "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", "data: h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\n"],
    ['empty data',         "",                          "data:\n"],
);

for my $c (@cases) {
    my ($name, $data, $data_lines) = @$c;
    my ($r, $ev) = publish_and_frame($data, $name);
    my $frame = "id: $r->{id}\n$data_lines\n";
    is($ev->{frame}, $frame, "$name: exact frame bytes");
    $expected_body .= $frame;
}
is($s->body, $expected_body, 'the stream body is exactly the preamble and the frames, in order');

# PUT publishes like POST.
{
    my ($r, $ev) = publish_and_frame("put\nbody", 'PUT', method => 'PUT');
    is($r->{events}, 1, 'PUT: one event');
    is($r->{subscribers}, 1, 'PUT: one subscriber');
    is($ev->{frame}, "id: $r->{id}\ndata: put\ndata: body\n\n", 'PUT: exact frame bytes');
    my ($r2, $ev2) = publish_and_frame("", 'PUT empty', method => 'PUT', headers => {'X-SSE-Event' => 'put.ev'});
    is($ev2->{frame}, "id: $r2->{id}\nevent: put.ev\ndata:\n\n", 'PUT with empty body and a name: exact frame bytes');
    cmp_ok($r2->{id}, '>', $r->{id}, 'PUT ids increase');
    $expected_body .= $ev->{frame} . $ev2->{frame};
}

# 1 MB of ASCII lines: 16384 lines of 63 characters joined by LF, one more character at the end
# to make exactly 1,048,576 bytes.
{
    my @lines;
    for my $i (0 .. 16383) {
        my $l = sprintf('%05d:', $i);
        $l .= chr(33 + ($i + $_) % 94) for 1 .. 57;
        push @lines, $l;
    }
    $lines[-1] .= 'Z';
    my $big = join "\n", @lines;
    is(length $big, 1_048_576, 'the payload is 1 MiB');

    my ($r, $ev) = publish_and_frame($big, '1 MiB');
    is($r->{events}, 1, '1 MiB: one event');
    my $frame = "id: $r->{id}\n" . join('', map { "data: $_\n" } @lines) . "\n";
    is(length($ev->{frame} // ''), length $frame, '1 MiB: frame length');
    ok(($ev->{data} // '') eq $big, '1 MiB: reassembled data is byte-exact');
    ok(($ev->{frame} // '') eq $frame, '1 MiB: frame is byte-exact');
    $expected_body .= $frame;

    # The same payload with CRLF line ends gives the same data lines.
    (my $crlf = $big) =~ s/\n/\r\n/g;
    my ($r2, $ev2) = publish_and_frame($crlf, '1 MiB CRLF');
    my $frame2 = "id: $r2->{id}\n" . join('', map { "data: $_\n" } @lines) . "\n";
    ok(($ev2->{frame} // '') eq $frame2, '1 MiB with CRLF: frame is byte-exact');
    $expected_body .= $frame2;

    # A small event after the big ones still arrives whole and next.
    my ($r3, $ev3) = publish_and_frame('after', 'after 1 MiB');
    is($ev3->{frame}, "id: $r3->{id}\ndata: after\n\n", 'event after the big ones: exact frame');
    $expected_body .= $ev3->{frame};
}

ok($s->body eq $expected_body, 'whole stream body is byte-exact') or diag('body length ' . length($s->body) . ' expected ' . length($expected_body));
$s->drain(0.3);
is(scalar($s->events), $seen, 'no extra event arrived');
ok(!$s->eof, 'the stream is still open');

$s->close;
$t->finish;
done_testing;
