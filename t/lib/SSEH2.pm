package SSEH2;

# A minimal raw HTTP/2 client (cleartext, prior knowledge) for tests that need control over flow
# control: it sends the connection preface and a SETTINGS frame with the initial window it is
# given, opens streams with a HEADERS frame whose HPACK block is made of literal representations
# (no Huffman, no indexing), acknowledges the server's SETTINGS, and otherwise only reads what it
# is told to read. It never sends WINDOW_UPDATE unless asked (window_update).
#
#   my $c = SSEH2->new(port => $port, window => 10);   # rcvbuf => 4096: a small SO_RCVBUF
#   my $sid = $c->get('/events?topics=a');
#   $c->read_for(0.5);                 # frames read so far: $c->frames
#   $c->status($sid)                   # 200 when the response HEADERS began with the indexed :status 200
#   $c->data($sid)                     # DATA bytes received on the stream
#   $c->reset($sid)                    # the RST_STREAM error code, when the server reset it
#   $c->close;

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);

use constant {DATA => 0, HEADERS => 1, RST_STREAM => 3, SETTINGS => 4, PING => 6, GOAWAY => 7, WINDOW_UPDATE => 8};

sub new {
    my ($class, %o) = @_;
    my $sock;
    if ($o{rcvbuf}) {
        # A small receive buffer, set before connect: once the client stops reading, the server's
        # writes back up at the TCP level (whatever the HTTP/2 windows allow).
        $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        $sock->setsockopt(SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) or die "setsockopt: $!";
        $sock->connect(pack_sockaddr_in($o{port}, inet_aton('127.0.0.1'))) or die "connect: $!";
    } else {
        $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $o{port}, Proto => 'tcp')
            or die "connect: $!";
    }
    $sock->blocking(0);
    my $self = bless {sock => $sock, next_id => 1, buf => '', frames => [], streams => {}, eof => 0, %o}, $class;
    my $settings = '';
    $settings .= pack('nN', 0x2, 0);                      # SETTINGS_ENABLE_PUSH 0
    $settings .= pack('nN', 0x4, $o{window}) if defined $o{window};    # SETTINGS_INITIAL_WINDOW_SIZE
    $self->_write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" . frame(SETTINGS, 0, 0, $settings));
    return $self;
}

sub frame {
    my ($type, $flags, $sid, $payload) = @_;
    my $len = length $payload;
    return pack('CnCCN', $len >> 16, $len & 0xffff, $type, $flags, $sid & 0x7fffffff) . $payload;
}

# An HPACK integer with an N-bit prefix (the prefix's other bits given in $first).
sub hpack_int {
    my ($n, $bits, $first) = @_;
    my $max = (1 << $bits) - 1;
    return pack('C', $first | $n) if $n < $max;
    my $out = pack('C', $first | $max);
    $n -= $max;
    while ($n >= 128) { $out .= pack('C', ($n % 128) + 128); $n = int($n / 128) }
    return $out . pack('C', $n);
}

# "Literal header field without indexing, new name": 0x00, then name and value as plain strings.
sub literal {
    my ($name, $value) = @_;
    return "\x00" . hpack_int(length $name, 7, 0) . $name . hpack_int(length $value, 7, 0) . $value;
}

sub _write {
    my ($self, $data) = @_;
    my $sel = IO::Select->new($self->{sock});
    while (length $data) {
        $sel->can_write(5) or die "h2 write timeout";
        my $n = syswrite($self->{sock}, $data);
        die "h2 write: $!" unless defined $n || $!{EAGAIN};
        substr($data, 0, $n, '') if $n;
    }
}

# Opens a GET stream; returns its id.
sub get {
    my ($self, $path, %headers) = @_;
    my $sid = $self->{next_id};
    $self->{next_id} += 2;
    my $block = literal(':method', 'GET') . literal(':scheme', 'http') . literal(':path', $path)
              . literal(':authority', 'localhost') . literal('accept', 'text/event-stream');
    $block .= literal(lc $_, $headers{$_}) for sort keys %headers;
    # END_STREAM | END_HEADERS
    $self->_write(frame(HEADERS, 0x5, $sid, $block));
    $self->{streams}{$sid} = {data => '', status => undef, reset => undef, ended => 0};
    return $sid;
}

sub window_update {
    my ($self, $sid, $n) = @_;
    $self->_write(frame(WINDOW_UPDATE, 0, $sid, pack('N', $n)));
}

# Reads and handles frames for $seconds (or until EOF).
sub read_for {
    my ($self, $seconds) = @_;
    my $sel = IO::Select->new($self->{sock});
    my $end = time + $seconds;
    while (!$self->{eof}) {
        my $left = $end - time;
        last if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($self->{sock}, my $chunk, 65536);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EINTR};
            $self->{eof} = 1;
            last;
        }
        if ($n == 0) { $self->{eof} = 1; last }
        $self->{buf} .= $chunk;
        $self->_frames;
    }
    return $self;
}

sub _frames {
    my ($self) = @_;
    while (length $self->{buf} >= 9) {
        my ($l1, $l2, $type, $flags, $sid) = unpack('CnCCN', $self->{buf});
        my $len = ($l1 << 16) | $l2;
        last if length $self->{buf} < 9 + $len;
        my $payload = substr($self->{buf}, 9, $len);
        substr($self->{buf}, 0, 9 + $len, '');
        $sid &= 0x7fffffff;
        push @{ $self->{frames} }, {type => $type, flags => $flags, sid => $sid, len => $len};
        my $st = $self->{streams}{$sid};
        if ($type == SETTINGS && !($flags & 1)) {
            $self->_write(frame(SETTINGS, 1, 0, ''));    # ACK
        } elsif ($type == PING && !($flags & 1)) {
            $self->_write(frame(PING, 1, 0, $payload));
        } elsif ($type == GOAWAY) {
            $self->{goaway} = unpack('x4N', $payload);
        } elsif ($st && $type == HEADERS) {
            # nginx sends :status 200 as the indexed field 8 (0x88); other statuses as literals.
            my $block = $payload;
            if ($flags & 0x8) { my $pad = ord $block; $block = substr($block, 1, length($block) - 1 - $pad) }
            $block = substr($block, 5) if $flags & 0x20;
            $st->{status} //= (ord($block) == 0x88) ? 200 : 'other';
            $st->{ended} = 1 if $flags & 0x1;
        } elsif ($st && $type == DATA) {
            my $data = $payload;
            if ($flags & 0x8) { my $pad = ord $data; $data = substr($data, 1, length($data) - 1 - $pad) }
            $st->{data} .= $data;
            $st->{ended} = 1 if $flags & 0x1;
        } elsif ($st && $type == RST_STREAM) {
            $st->{reset} = unpack('N', $payload);
        }
    }
}

sub frames { @{ $_[0]{frames} } }
sub status { $_[0]{streams}{ $_[1] }{status} }
sub data { $_[0]{streams}{ $_[1] }{data} }
sub reset { $_[0]{streams}{ $_[1] }{reset} }
sub ended { $_[0]{streams}{ $_[1] }{ended} }
sub eof { $_[0]{eof} }
sub goaway { $_[0]{goaway} }

# True when the server is done with the stream: reset, ended, or the connection went away.
sub gone {
    my ($self, $sid) = @_;
    my $st = $self->{streams}{$sid};
    return defined $st->{reset} || $st->{ended} || defined $self->{goaway} || $self->{eof};
}

sub close {
    my ($self) = @_;
    close $self->{sock} if $self->{sock};
    $self->{sock} = undef;
}

sub DESTROY { $_[0]->close }

1;
